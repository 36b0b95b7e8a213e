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
import functools
from typing import Any, Callable, Hashable, Mapping, Sequence

from simo import analysis, jobs, realign
from simo.config import Profile, with_settings
from simo.merged import MergeSetup, merge_setup
from simo.merging import method_params
from simo.steps import finetuned
from simo.tasks import delta_mtl

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
LAM_BOUNDS = (0.0, 3.0)  # a λ search widens its grid up to 3 while the best λ is on its edge
LR_STEPS = (-1.0, 0.0, 1.0)  # adapter lr search: realign.adapter_lr × 3^k, widened within ±3
LR_BOUNDS = (-3.0, 3.0)


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
    bounds: tuple[float, float] | None = None  # let the grid widen within these (analysis.search)


def run_searches(profile: Profile, searches: Mapping[Hashable, Search], desc: str = "λ search",
                 first: Sequence[jobs.Job] = ()
                 ) -> dict[Hashable, tuple[float, dict[float, float]]]:
    """Run many :func:`simo.analysis.search` generators in lockstep: each round, every unfinished
    search's values become jobs, computed in one batch (``first``: extra jobs for round 1), then
    scored. Returns each search's best value and scores, as one search at a time would."""
    gens = {k: analysis.search(s.grid, s.stride, s.bounds) for k, s in searches.items()}
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
    has_lam = "lam" in method_params(method)
    grid = p.merging.lam_grid if has_lam else (1.0,)
    return Search(tuple(float(v) for v in grid), 1,
                  lambda lam: jobs.job(setup.original, method, lam, "val"),
                  lambda lam: score(setup.original(method, lam, "val")),
                  LAM_BOUNDS if has_lam else None)


def realigned_search(setup: MergeSetup, method: str, convention: str = "normalized",
                     kind: str = "head") -> Search:
    """λ for the realigned model: coarse-to-fine, one realignment of ``kind`` per value tried."""
    p, score = setup.profile, _val_score(setup, convention)
    return Search(tuple(float(v) for v in p.merging.lam_grid), p.realign.select_stride,
                  lambda lam: jobs.job(setup.realign, method, lam, kind),
                  lambda lam: score(setup.realigned(method, lam, "val", kind)), LAM_BOUNDS)


def adapter_lr(profile: Profile, k: float) -> float:
    """The adapter learning rate ``k`` steps of ×3 from the profile's (3 significant digits)."""
    return float(f"{profile.realign.adapter_lr * 3.0 ** k:.3g}")


@functools.lru_cache(maxsize=16)
def lr_setup(profile: Profile, seed: int, lr: float) -> MergeSetup:
    """The merge setup of ``profile`` with its adapters trained at ``lr``."""
    return merge_setup(with_settings(profile, {"realign.adapter_lr": lr}), seed)


def lr_search(setup: MergeSetup, method: str, lam: float, convention: str = "normalized"
              ) -> Search:
    """The adapters' learning rate for ``method`` at ``lam``, on validation: ×3 steps around the
    profile's value, widened while the best is on an edge (the baselines' lr was chosen so too)."""
    p, s = setup.profile, setup.seed
    score = _val_score(setup, convention)
    return Search(LR_STEPS, 1,
                  lambda k: jobs.job(lr_setup(p, s, adapter_lr(p, k)).realign, method, lam, "repr"),
                  lambda k: score(lr_setup(p, s, adapter_lr(p, k)).realigned(method, lam, "val",
                                                                             "repr")),
                  LR_BOUNDS)


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
    tune_repr: bool = True  # choose the adapters' lr and their own λ on validation (first seed)


def plan(profile: Profile, seeds: Sequence[int], methods: Sequence[str], *,
         searched: Sequence[str] | None = None, kinds: Sequence[str] = REALIGNMENTS,
         protocols: Sequence[str] = PROTOCOLS, convention: str = "normalized",
         weighting: str = "equal", reference: str = "runs",
         extra: Sequence[tuple[str, float, str]] = (), budgets: Sequence[float] = (),
         with_fisher: bool = False, tune_repr: bool = True) -> Plan:
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
                {s: merge_setup(profile, s, with_fisher) for s in seeds},
                tune_repr and "repr" in kinds)


@dataclasses.dataclass
class Study:
    """A plan with its chosen λ: ``lam[protocol][method, seed]`` and the scores each search saw,
    ``scores[protocol][method, seed]`` (realigned: the first seed only). With tuned
    representation realignment, its own λ is ``lam["realigned_lambda"]["method+repr", seed]``
    and its adapters' lr ``lr[method]`` (scores per lr step k: ``lr_scores[method]``). Numbers
    are read from the cache on demand."""

    plan: Plan
    lam: dict[str, dict[tuple[str, int], float]]
    scores: dict[str, dict[tuple[str, int], dict[float, float]]]
    lr: dict[str, float] = dataclasses.field(default_factory=dict)
    lr_scores: dict[str, dict[float, float]] = dataclasses.field(default_factory=dict)

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

    def lam_of(self, key: str, seed: int, protocol: str = "realigned_lambda") -> float:
        """The λ of ``method`` or ``method+kind`` under ``protocol`` (a kind's own, if searched)."""
        return self.lam[protocol].get((key, seed), self.lam[protocol][key.split("+")[0], seed])

    def setup_for(self, key: str, seed: int) -> MergeSetup:
        """The setup ``key`` is realigned with: the tuned adapter lr for ``method+repr``."""
        m, _, kind = key.partition("+")
        if kind == "repr" and m in self.lr:
            return lr_setup(self.profile, seed, self.lr[m])
        return self.plan.setups[seed]

    def record(self, key: str, seed: int, protocol: str = "realigned_lambda") -> dict:
        """The realignment ``method+kind`` at the protocol's λ (test, val, steps, samples ...)."""
        m, kind = key.split("+")
        return self.setup_for(key, seed).realign(m, self.lam_of(key, seed, protocol), kind)

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

    def budget_args(self, kind: str, fraction: float) -> tuple:
        """:func:`realign_with_budget`'s arguments for the first method and seed."""
        m, s0 = self.methods[0], self.seeds[0]
        key = f"{m}+{kind}"
        return (self.setup_for(key, s0).profile, s0, m, self.lam_of(key, s0), kind, fraction)

    def final_jobs(self) -> list[jobs.Job]:
        """Every step after the λ searches: realignments (longest first), test evaluations."""
        pl = self.plan
        out = [jobs.job(self.setup_for(f"{m}+{kind}", s).realign, m,
                        self.lam_of(f"{m}+{kind}", s, p), kind)
               for kind in reversed(pl.kinds) for s in pl.seeds for p in pl.protocols
               for m in (pl.methods if p == "original_lambda" else pl.searched)]
        out += [jobs.job(pl.setups[s].realign, *e) for s in pl.seeds for e in pl.extra]
        out += [jobs.job(realign_with_budget, *self.budget_args(kind, f))
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
        studies.append(Study(pl, lam, scores))
    _tune_repr(studies, desc)
    for st in studies:  # chosen on the first seed, used for every seed
        rl, s0 = st.lam["realigned_lambda"], st.seeds[0]
        rl.update({(key, s): rl[key, s0] for key, s1 in list(rl) if s1 == s0 for s in st.seeds})
    jobs.prefetch(plans[0].profile, unique([j for st in studies for j in st.final_jobs()]),
                  desc=f"{desc}: realignments")
    return studies


def _tune_repr(studies: Sequence[Study], desc: str) -> None:
    """For plans that tune representation realignment: the adapters' lr at the head-realigned λ
    (:func:`lr_search`), then λ re-selected with adapters at that lr, all on the first seed."""
    todo = [(i, m) for i, st in enumerate(studies) if st.plan.tune_repr for m in st.plan.searched]
    if not todo:
        return
    profile = studies[0].profile
    lrs = run_searches(profile, {(i, m): lr_search(
        studies[i].plan.setups[studies[i].seeds[0]], m,
        studies[i].lam["realigned_lambda"][m, studies[i].seeds[0]], studies[i].plan.convention)
        for i, m in todo}, f"{desc}: adapter lr")
    for (i, m), (k, seen) in lrs.items():
        st = studies[i]
        st.lr[m], st.lr_scores[m] = adapter_lr(st.profile, k), seen
    found = run_searches(profile, {(i, m): realigned_search(
        lr_setup(studies[i].profile, studies[i].seeds[0], studies[i].lr[m]), m,
        studies[i].plan.convention, "repr") for i, m in todo}, f"{desc}: λ for adapters")
    for (i, m), (best, seen) in found.items():
        st, key = studies[i], (f"{m}+repr", studies[i].seeds[0])
        st.lam["realigned_lambda"][key], st.scores["realigned_lambda"][key] = best, seen


def training_jobs(profile: Profile, seeds: Sequence[int], weighting: str = "equal") -> list:
    """The single-task and joint MTL runs of every seed, the (longest) joint runs first."""
    names = list(profile.tasks)
    return ([jobs.job(finetuned, profile, names, seed=s, weighting=weighting, progress=False)
             for s in seeds]
            + [jobs.job(finetuned, profile, t, seed=s, progress=False) for s in seeds
               for t in names])
