"""The paper's protocol, written once for notebooks 02, 03 and 06.

Two λ protocols: λ chosen with the *original* heads on validation (every grid value; cheap
evaluations), and λ chosen for the *realigned* model (a head realignment per value tried,
coarse-to-fine with ``realign.select_stride``, on the first seed, then used for every seed like
any other hyperparameter). Ties go to the smaller λ in both. Δ_MTL is measured against the
single-task models of the same seed; realignment costs are counted for the realignment alone and
for the whole pipeline that it needs. The paper's numbers and its claim live here too.

A :class:`Plan` says what one profile needs; :func:`run` takes many plans and runs every λ
search in lockstep (:func:`run_searches`: one :func:`simo.jobs.prefetch` per round for all of
them), then every realignment at the chosen λ in one more batch. Every step is cached and seeded,
so the batching changes when things are computed, never what they are.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Hashable, Mapping, Sequence

import numpy as np

from simo import analysis, jobs, realign
from simo.config import Profile, with_settings
from simo.merged import MergeSetup, merge_setup
from simo.merging import method_params
from simo.steps import finetuned, tasks_of
from simo.tasks import delta_label, delta_mtl

# the paper's claim: within 3 points of joint MTL, with ≤ 1/6 of its steps, ≤ 1/4 of its samples
PAPER_CLAIM = {"gap": 3.0, "steps": 6.0, "samples": 4.0}
# Δ_MTL in % on NYUv2 (docs/papers.md#simo-headline-numbers)
PAPER_NYUV2 = {"joint_mtl": -5.4, "task_arithmetic": -27.5, "ties": -32.8,
               "task_arithmetic+head": -5.4, "task_arithmetic+repr": -5.5, "ties+head": -8.7,
               "ties+repr": -6.2}
PROTOCOLS = ("original_lambda", "realigned_lambda")
REALIGNMENTS = tuple(realign.SETTINGS)  # the kinds of realignment: head, repr
BUDGET_KEYS = {"head": "head_steps", "repr": "adapter_steps"}  # what a budget fraction scales
REFERENCES = ("runs", "merged")  # single-task test metrics: the runs' own, or re-evaluated
COST_FIELDS = ("steps", "samples", "seconds")


def claim_holds(delta: Mapping[str, float], cost: Mapping[str, Mapping], method: str) -> dict:
    """Does ``method`` meet the paper's claim against joint MTL (PAPER_CLAIM): within 3 points,
    at most 1/6 of its optimizer steps and 1/4 of its labelled samples?"""
    gap = delta["joint_mtl"] - delta[method]
    steps = cost["joint_mtl"]["steps"] / max(cost[method]["steps"], 1)
    samples = cost["joint_mtl"]["samples"] / max(cost[method]["samples"], 1)
    return {"gap": gap, "steps_ratio": steps, "samples_ratio": samples,
            "holds": bool(gap <= PAPER_CLAIM["gap"] and steps >= PAPER_CLAIM["steps"]
                          and samples >= PAPER_CLAIM["samples"])}


# ------------------------------------------------------------------ λ searches in lockstep -------

@dataclasses.dataclass(frozen=True)
class Search:
    """One λ search: its grid and stride, the cached step a value needs (``job``) and its
    validation score once that step is cached (higher = better)."""

    grid: tuple[float, ...]
    stride: int
    job: Callable[[float], jobs.Job]
    score: Callable[[float], float]


def run_searches(profile: Profile, searches: Mapping[Hashable, Search], desc: str = "λ search",
                 first: Sequence[jobs.Job] = ()
                 ) -> dict[Hashable, tuple[float, dict[float, float]]]:
    """Run many :func:`simo.analysis.search` generators in lockstep: each round, every unfinished
    search's values become jobs, computed in one batch (``first``: extra jobs for round 1), then
    scored. Returns each search's best value and scores, as one search at a time would."""
    gens = {k: analysis.search(s.grid, s.stride) for k, s in searches.items()}
    todo = {k: next(g) for k, g in gens.items()}
    found: dict[Hashable, tuple[float, dict[float, float]]] = {}
    extra, n = list(first), 0
    while todo:
        n += 1
        jobs.prefetch(profile, unique(extra + [searches[k].job(v) for k, vs in todo.items()
                                               for v in vs]), desc=f"{desc}: round {n}")
        extra, nxt = [], {}
        for k, values in todo.items():
            try:
                nxt[k] = gens[k].send({v: searches[k].score(v) for v in values})
            except StopIteration as done:
                found[k] = done.value
        todo = nxt
    return {k: found[k] for k in searches}


def unique(calls: Sequence[jobs.Job]) -> list[jobs.Job]:
    """``calls`` without repeats (the same method of the same setup with the same arguments)."""
    seen, out = set(), []
    for c in calls:
        owner = getattr(c.func, "__self__", None)
        key = (getattr(c.func, "__qualname__", None) or id(c.func),
               (owner.profile, owner.seed) if isinstance(owner, MergeSetup) else id(owner),
               c.args, tuple(sorted(c.keywords.items())))
        if key not in seen:
            seen.add(key)
            out.append(c)
    return out


def _val_score(setup: MergeSetup, convention: str) -> Callable[[dict], float]:
    return lambda metrics: delta_mtl(metrics, setup.original("single_task", 1.0, "val"),
                                     setup.tasks, convention)


def original_search(setup: MergeSetup, method: str, convention: str = "normalized") -> Search:
    """λ with the original heads: every grid value (methods without λ: just 1.0)."""
    p, score = setup.profile, _val_score(setup, convention)
    grid = p.merging.lam_grid if "lam" in method_params(method) else (1.0,)
    return Search(tuple(float(v) for v in grid), 1,
                  lambda lam: jobs.job(setup.original, method, lam, "val"),
                  lambda lam: score(setup.original(method, lam, "val")))


def realigned_search(setup: MergeSetup, method: str, convention: str = "normalized") -> Search:
    """λ for the head-realigned model: coarse-to-fine, one head realignment per value tried."""
    p, score = setup.profile, _val_score(setup, convention)
    return Search(tuple(float(v) for v in p.merging.lam_grid), p.realign.select_stride,
                  lambda lam: jobs.job(setup.realign, method, lam, "head"),
                  lambda lam: score(setup.realigned(method, lam, "val", "head")))


# ------------------------------------------------------------------ plans and their results ------

@dataclasses.dataclass
class Plan:
    """What one profile needs: λ searches (``methods`` with the original heads on every seed,
    ``searched`` with realigned heads on the first seed), then realignments of ``kinds`` at the
    λ of each of ``protocols``, ``extra`` realignments ``(method, λ, kind)`` on every seed and
    ``budgets`` (fractions of the realignment budget, first method, first seed)."""

    profile: Profile
    seeds: tuple[int, ...]
    methods: tuple[str, ...]
    searched: tuple[str, ...]
    kinds: tuple[str, ...] = REALIGNMENTS
    protocols: tuple[str, ...] = PROTOCOLS
    convention: str = "normalized"
    weighting: str = "equal"
    reference: str = "runs"
    extra: tuple[tuple[str, float, str], ...] = ()
    budgets: tuple[float, ...] = ()
    setups: dict[int, MergeSetup] = dataclasses.field(default_factory=dict)


def plan(profile: Profile, seeds: Sequence[int], methods: Sequence[str], *,
         searched: Sequence[str] | None = None, kinds: Sequence[str] = REALIGNMENTS,
         protocols: Sequence[str] = PROTOCOLS, convention: str = "normalized",
         weighting: str = "equal", reference: str = "runs",
         extra: Sequence[tuple[str, float, str]] = (), budgets: Sequence[float] = (),
         with_fisher: bool = False) -> Plan:
    """A :class:`Plan` with its merge setups loaded (single-task runs trained if need be).

    ``reference``: ``runs`` reads the single-task runs' own test metrics (03, 06), ``merged``
    re-evaluates the single-task encoders as a merge (02); ``weighting``: joint MTL's loss."""
    if reference not in REFERENCES:
        raise ValueError(f"unknown reference {reference!r}; choose one of: {', '.join(REFERENCES)}")
    if not seeds:
        raise ValueError("a plan needs at least one seed")
    return Plan(profile, tuple(seeds), tuple(methods),
                tuple(methods if searched is None else searched), tuple(kinds), tuple(protocols),
                convention, weighting, reference, tuple(extra), tuple(budgets),
                {s: merge_setup(profile, s, with_fisher) for s in seeds})


@dataclasses.dataclass
class Study:
    """A plan with its chosen λ: ``lam[protocol][method, seed]`` and the scores each search saw,
    ``scores[protocol][method, seed]`` (realigned: the first seed only). Numbers are read from
    the cache on demand."""

    plan: Plan
    lam: dict[str, dict[tuple[str, int], float]]
    scores: dict[str, dict[tuple[str, int], dict[float, float]]]

    @property
    def profile(self) -> Profile:
        return self.plan.profile

    @property
    def seeds(self) -> list[int]:
        return list(self.plan.seeds)

    @property
    def methods(self) -> list[str]:
        return list(self.plan.methods)

    @property
    def order(self) -> list[str]:
        """Joint MTL, then each method alone and with each kind of realignment."""
        return ["joint_mtl"] + [m + k for m in self.methods
                                for k in ("", *(f"+{kind}" for kind in self.plan.kinds))]

    def single(self, seed: int) -> dict[str, Any]:
        return {t: finetuned(self.profile, t, seed=seed) for t in self.profile.tasks}

    def mtl(self, seed: int) -> Any:
        return finetuned(self.profile, list(self.profile.tasks), seed=seed,
                         weighting=self.plan.weighting)

    def ref_test(self, seed: int) -> dict[str, dict[str, float]]:
        """The single-task test metrics every Δ_MTL of ``seed`` is measured against."""
        if self.plan.reference == "merged":
            return self.plan.setups[seed].original("single_task", 1.0, "test")
        return {t: a.meta["test"][t] for t, a in self.single(seed).items()}

    def delta_of(self, metrics: Mapping, seed: int) -> float:
        return delta_mtl(metrics, self.ref_test(seed), self.plan.setups[seed].tasks,
                         self.plan.convention)

    def record(self, key: str, seed: int, protocol: str = "realigned_lambda") -> dict:
        """The realignment ``method+kind`` at the protocol's λ (test, val, steps, samples ...)."""
        m, kind = key.split("+")
        return self.plan.setups[seed].realign(m, self.lam[protocol][m, seed], kind)

    def test(self, key: str, seed: int, protocol: str = "realigned_lambda") -> dict:
        """Test metrics of ``joint_mtl``, a merge with its original heads (original λ), or
        ``method+kind`` realigned at the protocol's λ."""
        if key == "joint_mtl":
            return self.mtl(seed).meta["test"]
        if "+" in key:
            return self.record(key, seed, protocol)["test"]
        return self.plan.setups[seed].original(key, self.lam["original_lambda"][key, seed], "test")

    def delta(self, key: str, seed: int, protocol: str = "realigned_lambda") -> float:
        return self.delta_of(self.test(key, seed, protocol), seed)

    def single_cost(self, seed: int) -> dict[str, float]:
        """Steps (summed), distinct samples (max) and seconds (summed) of the single-task runs."""
        arts = self.single(seed).values()
        return {"steps": sum(a.meta["steps"] for a in arts),
                "samples": max(a.meta["samples"] for a in arts),
                "seconds": sum(a.meta["seconds"] for a in arts)}

    def final_jobs(self) -> list[jobs.Job]:
        """Every step after the λ searches: realignments (longest first), test evaluations."""
        pl, s0 = self.plan, self.seeds[0]
        out = [jobs.job(pl.setups[s].realign, m, self.lam[p][m, s], kind)
               for kind in reversed(pl.kinds) for s in pl.seeds for p in pl.protocols
               for m in (pl.methods if p == "original_lambda" else pl.searched)]
        out += [jobs.job(pl.setups[s].realign, *e) for s in pl.seeds for e in pl.extra]
        out += [jobs.job(realign_with_budget, pl.profile, s0, pl.methods[0],
                         self.lam["realigned_lambda"][pl.methods[0], s0], kind, f)
                for kind in pl.kinds for f in pl.budgets]
        out += [jobs.job(pl.setups[s].original, m, self.lam["original_lambda"][m, s], "test")
                for s in pl.seeds for m in pl.methods]
        if pl.reference == "merged":
            out += [jobs.job(pl.setups[s].original, "single_task", 1.0, "test") for s in pl.seeds]
        return out


def realign_with_budget(profile: Profile, seed: int, method: str, lam: float, kind: str,
                        fraction: float) -> dict:
    """:meth:`MergeSetup.realign` with ``fraction`` of the profile's ``kind`` budget (a job: the
    setup is built where it runs, and let go after)."""
    knob = BUDGET_KEYS[kind]
    n = max(1, round(fraction * getattr(profile.realign, knob)))
    return merge_setup(with_settings(profile, {f"realign.{knob}": n}), seed).realign(method, lam,
                                                                                      kind)


def run(plans: Sequence[Plan], desc: str = "protocol") -> list[Study]:
    """Every plan's λ searches in lockstep, then every realignment they lead to, in batches of
    independent jobs (:mod:`simo.jobs`). Returns one :class:`Study` per plan."""
    if not plans:
        return []
    searches: dict[Hashable, Search] = {}
    for i, pl in enumerate(plans):  # the expensive searches first
        s0 = pl.seeds[0]
        searches.update({(i, "realigned_lambda", m, s0): realigned_search(pl.setups[s0], m,
                                                                          pl.convention)
                         for m in pl.searched})
        searches.update({(i, "original_lambda", m, s): original_search(pl.setups[s], m,
                                                                        pl.convention)
                         for s in pl.seeds for m in pl.methods})
    refs = [jobs.job(pl.setups[s].original, "single_task", 1.0, "val")
            for pl in plans for s in pl.seeds]
    found = run_searches(plans[0].profile, searches, f"{desc}: λ searches", refs)
    studies = []
    for i, pl in enumerate(plans):
        lam: dict = {p: {} for p in PROTOCOLS}
        scores: dict = {p: {} for p in PROTOCOLS}
        for (j, p, m, s), (best, seen) in found.items():
            if j == i:
                lam[p][m, s], scores[p][m, s] = best, seen
        for m in pl.searched:  # chosen on the first seed, used for every seed
            lam["realigned_lambda"].update({(m, s): lam["realigned_lambda"][m, pl.seeds[0]]
                                            for s in pl.seeds})
        studies.append(Study(pl, lam, scores))
    jobs.prefetch(plans[0].profile, unique([j for st in studies for j in st.final_jobs()]),
                  desc=f"{desc}: realignments")
    return studies


def training_jobs(profile: Profile, seeds: Sequence[int], weighting: str = "equal") -> list:
    """The single-task and joint MTL runs of every seed, the (longest) joint runs first."""
    names = list(profile.tasks)
    return ([jobs.job(finetuned, profile, names, seed=s, weighting=weighting, progress=False)
             for s in seeds]
            + [jobs.job(finetuned, profile, t, seed=s, progress=False) for s in seeds
               for t in names])


# ------------------------------------------------------------------ reports (notebook 03) -------

def summary(study: Study) -> dict[str, dict[str, dict]]:
    """Δ_MTL of every key of ``study.order`` under each λ protocol: mean, 95 % CI, each seed."""
    return {p: {k: analysis.mean_ci([study.delta(k, s, p) for s in study.seeds])
                for k in study.order} for p in study.plan.protocols}


def main_metrics(study: Study, means: Mapping[str, dict]) -> Any:
    """The main test metric of every task per key (mean over seeds; realigned λ), Δ_MTL ours
    (``means``: :func:`summary`'s realigned-λ entry) and the paper's (NYUv2), and the
    single-task row: a table next to the paper's."""
    import pandas as pd

    order, seeds, tasks = study.order, study.seeds, tasks_of(study.profile)
    table = pd.DataFrame({
        **{f"{t.name} {t.main_metric}": {k: np.mean([study.test(k, s)[t.name][t.main_metric]
                                                     for s in seeds]) for k in order}
           for t in tasks},
        "Δ_MTL ours": {k: means[k]["mean"] for k in order},
        "Δ_MTL paper (NYUv2)": {k: PAPER_NYUV2.get(k, np.nan) for k in order}})
    table.loc["single-task"] = [np.mean([study.ref_test(s)[t.name][t.main_metric] for s in seeds])
                                for t in tasks] + [0.0, 0.0]
    return table


def costs(study: Study) -> dict[str, dict[str, dict[str, float]]]:
    """Mean cost over seeds of every key: ``alone`` (the realignment run) and ``pipeline`` (plus
    the single-task runs it merges and, for realignment, one head realignment per λ the search
    tried; the search runs once but is counted in full for every seed, "+head" is one of them)."""
    tried = {m: len(study.scores["realigned_lambda"][m, study.seeds[0]])
             for m in study.plan.searched}
    out = {}
    for k in study.order:
        rows = []
        for s in study.seeds:
            if k == "joint_mtl":
                alone = {f: study.mtl(s).meta[f] for f in COST_FIELDS}
                pipe = alone
            else:
                m = k.split("+")[0]
                alone = ({f: study.record(k, s)[f] for f in COST_FIELDS} if "+" in k
                         else {"steps": 0, "samples": 0, "seconds": 0.0})
                sc = study.single_cost(s)
                n_search = (tried[m] - (k.endswith("+head"))) if "+" in k else 0
                head_run = study.record(f"{m}+head", s)
                pipe = {"steps": sc["steps"] + alone["steps"] + n_search * head_run["steps"],
                        "samples": max(sc["samples"], alone["samples"]),
                        "seconds": sc["seconds"] + alone["seconds"]
                        + n_search * head_run["seconds"]}
            rows.append((alone, pipe))
        out[k] = {scope: {f: float(np.mean([row[i][f] for row in rows])) for f in COST_FIELDS}
                  for i, scope in enumerate(("alone", "pipeline"))}
    return out


def efficiency(study: Study) -> dict[str, list[tuple[int, int, float]]]:
    """(steps, distinct samples, val Δ_MTL) along joint MTL's training curve (first seed,
    against the single-task runs' last validation) and of the first method realigned at its
    realigned λ with each budget fraction (against the single-task models on the λ images)."""
    p, s0, conv = study.profile, study.seeds[0], study.plan.convention
    tasks, ta = tasks_of(p), study.methods[0]
    ref_curve = {t: a.meta["history"][-1]["val"][t] for t, a in study.single(s0).items()}
    mtl = study.mtl(s0)
    seen = analysis.samples_seen(p.data.n_train, p.finetune.batch_size, s0, mtl.meta["steps"])
    curves = {"joint MTL": [(h["step"], seen[h["step"] - 1], delta_mtl(h["val"], ref_curve, tasks,
                                                                      conv))
                            for h in mtl.meta["history"] if "val" in h]}
    ref_val = study.plan.setups[s0].original("single_task", 1.0, "val")
    lam0 = study.lam["realigned_lambda"][ta, s0]
    for kind in study.plan.kinds:
        for f in study.plan.budgets:
            rec = realign_with_budget(p, s0, ta, lam0, kind, f)
            curves.setdefault(f"{ta}+{kind}", []).append(
                (rec["steps"], rec["samples"], delta_mtl(rec["val"], ref_val, tasks, conv)))
    return curves


# ------------------------------------------------------------------ what we saw ------------------

def facts_02(results: Mapping[str, Any]) -> dict[str, Any]:
    """What notebook 02's results say: the recovery of each realigned method (one sentence
    each), the ceiling, the last block's similarities and how to read them, best and worst."""
    lam = results["lambda"]
    delta = {m: results["delta_mtl"][m] for m in lam["original_heads"]}
    head_o = results["delta_mtl_head_retrain_original_lambda"]
    recovery = []
    for m, r in results["delta_mtl_head_retrain_realigned_lambda"].items():
        loss, rec_o, rec_r, lr = -delta[m], head_o[m] - delta[m], r - delta[m], lam["realigned"][m]
        txt = (f"head realignment recovers {rec_o:.1f} points with that λ ({rec_o / loss:.0%} of "
               f"the loss) and {rec_r:.1f} points with λ re-selected ({lr}) ({rec_r / loss:.0%})"
               if loss >= 0.5 else  # a share of a loss of (almost) nothing would mean nothing
               f"the merge lost less than half a point, so there was (almost) no loss to recover; "
               f"head realignment moves it by {rec_o:+.1f} points with that λ and {rec_r:+.1f} "
               f"with λ re-selected ({lr})")
        recovery.append(f"{m}: Δ_MTL {delta[m]:+.1f} % with the original heads "
                        f"(λ={lam['original_heads'][m]}); {txt}.")
    cos, cka = ({t: v[-1] for t, v in results[k].items()} for k in ("cosine", "cka"))
    apart = min(cka.values()) - max(cos.values()) > 0.1
    best, worst = max(delta, key=delta.get), min(delta, key=delta.get)
    return {"recovery": recovery, "ceiling": results["head_retrain_ceiling"],
            "cosine_last": (min(cos.values()), max(cos.values())), "lowest": min(cos, key=cos.get),
            "cka_last": (min(cka.values()), max(cka.values())),
            "reading": "CKA stays well above cosine: the merged features keep most of each "
                       "single-task encoder's structure up to a rotation and scaling that a fixed "
                       "head cannot undo - misalignment, not lost information." if apart else
                       "CKA is not clearly above cosine here, so this diagnostic alone does not "
                       "separate misalignment from lost information; rely on the head-retraining "
                       "recovery above.",
            "best": (best, delta[best]), "worst": (worst, delta[worst]),
            "label": delta_label(results["convention"])}


def facts_03(results: Mapping[str, Any], methods: Sequence[str]) -> dict[str, Any]:
    """What notebook 03's results say: joint MTL, the baselines' plateau, each realigned method
    under both λ protocols, and the paper's claim for the first method + repr."""
    d, o = results["delta_mtl"], results["delta_mtl_original_lambda"]
    mt = d["joint_mtl"]["mean"]
    gains = [x for col in results["plateau_gain"].values() for x in col.values() if x == x]
    worst = max(gains)
    rows = [{"key": key, "realigned": d[key]["mean"], "original": o[key]["mean"],
             "merge": d[m]["mean"], "gap": d[key]["mean"] - mt}
            for m in methods for key in (f"{m}+{k}" for k in REALIGNMENTS) if key in d]
    k = f"{methods[0]}+repr"
    alone = {key: {f: results[f][key] for f in COST_FIELDS} for key in ("joint_mtl", k)}
    claim = claim_holds({"joint_mtl": mt, k: d[k]["mean"]}, alone, k)
    pipe = results["pipeline"]
    return {"mtl": mt, "mtl_ci": d["joint_mtl"]["ci95"], "plateau": worst,
            "plateau_reading": "(both baselines have flattened)." if worst < 0.02 else
            "(still improving: the baselines are not fully converged; read gaps of a few points "
            "with care).", "rows": rows,
            "claim": {**claim, "method": k, "gap_to_mtl": d[k]["mean"] - mt,
                      "time_ratio": alone["joint_mtl"]["seconds"] / max(alone[k]["seconds"], 1e-9)},
            "pipeline_ratio": pipe[k]["seconds"] / max(pipe["joint_mtl"]["seconds"], 1e-9)}
