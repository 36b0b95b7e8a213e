"""What the protocol's studies say (:mod:`simo.protocol`): Δ_MTL tables, costs counted alone and
for the whole pipeline, efficiency curves, the baselines' convergence evidence, the paper's claim,
and the facts that notebooks 02 and 03 print under "What we saw".
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from simo import analysis, jobs
from simo.config import Profile
from simo.protocol import (COST_FIELDS, PAPER_NYUV2, REALIGNMENTS, Study, claim_holds,
                           realign_with_budget)
from simo.steps import finetuned, tasks_of
from simo.tasks import delta_label, delta_mtl, get_tasks
from simo.transfer import longer_profile


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
    the single-task runs it merges and every realignment its searches tried besides itself: one
    head realignment per λ of the head search, and for tuned adapters one adapter run per lr and
    per λ of their own searches; the searches run once but are counted in full for every seed)."""
    s0 = study.seeds[0]
    tried = {m: len(study.scores["realigned_lambda"][m, s0]) for m in study.plan.searched}
    tried_repr = {m: len(study.scores["realigned_lambda"].get((f"{m}+repr", s0), {}))
                  + len(study.lr_scores.get(m, {})) for m in study.plan.searched}
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
                n_head = (tried[m] - (k.endswith("+head"))) if "+" in k else 0
                n_repr = max(tried_repr[m] - 1, 0) if k.endswith("+repr") else 0
                head_run = study.record(f"{m}+head", s)
                pipe = {f: sc[f] + alone[f] + n_head * head_run[f] + n_repr * alone[f]
                        for f in ("steps", "seconds")}
                pipe["samples"] = max(sc["samples"], alone["samples"])
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
    for kind in study.plan.kinds:
        for f in study.plan.budgets:
            rec = realign_with_budget(*study.budget_args(kind, f))
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
    """What notebook 03's results say: the baselines' convergence, joint MTL, each realigned
    method under both λ protocols, how realignment was tuned, and the paper's claim for the
    first method + repr (costs counted alone and for the whole pipeline)."""
    d, o = results["delta_mtl"], results["delta_mtl_original_lambda"]
    mt = d["joint_mtl"]["mean"]
    rows = [{"key": key, "realigned": d[key]["mean"], "original": o[key]["mean"],
             "merge": d[m]["mean"], "gap": d[key]["mean"] - mt}
            for m in methods for key in (f"{m}+{k}" for k in REALIGNMENTS) if key in d]
    conv = results["convergence"]
    unconverged = [f"{which} {t} (+{r['gain']:.1%} at {r['steps'][1]} steps)"
                   for which, c in conv.items() for t, r in c["tasks"].items()
                   if not r["converged"]]
    tune, c = results["tuning"], results["claim"]
    val = tune["val_delta_mtl"]
    behind = [m for m in methods if f"{m}+repr" in val and val[f"{m}+repr"] < val[f"{m}+head"]]
    edges = sorted(f"{k} ({p.replace('_', ' ')})" for p, ks in tune["interior"].items()
                   for k, inside in ks.items() if not inside)
    k = c["method"]
    alone = {key: {f: results[f][key] for f in COST_FIELDS} for key in ("joint_mtl", k)}
    return {"mtl": mt, "mtl_ci": d["joint_mtl"]["ci95"], "rows": rows,
            "converged": not unconverged, "unconverged": unconverged,
            "adapter_lr": tune["adapter_lr"], "repr_behind_head": behind, "lambda_edges": edges,
            "claim": {**c, "gap_to_mtl": d[k]["mean"] - mt,
                      "time_ratio": alone["joint_mtl"]["seconds"] / max(alone[k]["seconds"], 1e-9)},
            "pipeline_ratio": results["pipeline"][k]["seconds"]
            / max(results["pipeline"]["joint_mtl"]["seconds"], 1e-9)}


# ------------------------------------------------------------------ convergence and the claim ----

CONVERGED = 0.01  # twice the steps improve the main val metric by less than 1 % (relative)
BASELINES = ("single-task", "joint MTL")


def _baseline(profile: Profile, which: str, task: str, seed: int, weighting: str) -> Any:
    if which == "single-task":
        return finetuned(profile, task, seed=seed)
    return finetuned(profile, list(profile.tasks), seed=seed, weighting=weighting)


def convergence_jobs(profile: Profile, seed: int, weighting: str = "equal") -> list:
    """The baselines of ``seed`` at twice their steps (:func:`convergence`), joint run first."""
    longer, names = longer_profile(profile), list(profile.tasks)
    return ([jobs.job(finetuned, longer, names, seed=seed, weighting=weighting, progress=False)]
            + [jobs.job(finetuned, longer, t, seed=seed, progress=False) for t in names])


def convergence(profile: Profile, seed: int, weighting: str = "equal") -> dict:
    """Has each baseline converged? Its run of ``seed`` against a run at twice the steps (same
    recipe, so the same warm-up + cosine shape, stretched): a flat tail under a decaying lr
    cannot fake this. Per baseline and task: ``steps``, main val metric of both runs, ``gain``
    (relative, + = the longer run is better) and ``converged`` (gain < 1 %); per baseline
    ``converged`` for all its tasks."""
    out: dict = {}
    for which in BASELINES:
        rows = {}
        for t in get_tasks(profile.tasks):
            short, long_ = (_baseline(q, which, t.name, seed, weighting)
                            for q in (profile, longer_profile(profile)))
            v = [a.meta["val"][t.name][t.main_metric] for a in (short, long_)]
            sign = 1.0 if analysis.higher_is_better(t) else -1.0
            gain = sign * (v[1] - v[0]) / abs(v[0])
            rows[t.name] = {"metric": t.main_metric, "steps": [short.meta["steps"],
                                                               long_.meta["steps"]],
                            "val": v, "gain": gain, "converged": bool(gain < CONVERGED)}
        out[which] = {"tasks": rows, "converged": all(r["converged"] for r in rows.values())}
    return out


def convergence_curves(profile: Profile, seed: int, weighting: str = "equal") -> dict:
    """``{baseline: {task: {"budget" | "2× budget": (steps, values)}}}``: both runs' val curves."""
    return {which: {t.name: {label: analysis.curve(
        _baseline(q, which, t.name, seed, weighting).meta["history"], t.name, t.main_metric)
        for label, q in (("budget", profile), ("2× budget", longer_profile(profile)))}
        for t in get_tasks(profile.tasks)} for which in BASELINES}


def claim(study: Study, summary_: Mapping[str, Mapping], costs_: Mapping[str, Mapping],
          method: str | None = None) -> dict:
    """The paper's claim for ``method+repr`` (default: the first method) against joint MTL, per λ
    protocol: the gap in points (mean and 95 % CI over seeds), steps and samples ratios of the
    realignment alone and of the whole pipeline, and whether it holds (PAPER_CLAIM). The top
    level is the realigned-λ protocol, the paper's."""
    key = f"{method or study.methods[0]}+repr"
    out = {}
    for p in study.plan.protocols:
        gaps = [a - b for a, b in zip(summary_[p]["joint_mtl"]["seeds"], summary_[p][key]["seeds"])]
        gap = analysis.mean_ci(gaps)
        ways = {}
        for scope in ("alone", "pipeline"):
            c = claim_holds({"joint_mtl": 0.0, key: -gap["mean"]},
                            {k: costs_[k][scope] for k in ("joint_mtl", key)}, key)
            ways[scope] = {"steps_ratio": c["steps_ratio"], "samples_ratio": c["samples_ratio"],
                           "holds": c["holds"]}
        out[p] = {"method": key, "gap": {"mean": gap["mean"], "ci95": gap["ci95"]},
                  **ways["alone"], "pipeline": ways["pipeline"]}
    return {**out["realigned_lambda"], "original_lambda": out.get("original_lambda")}


def tuning(study: Study) -> dict:
    """How the realignments were tuned, on validation (first seed): the adapters' lr and what each
    lr scored, each kind's λ and validation Δ_MTL, and per λ search whether its choice is interior
    to the values it scored (a choice on an edge says the grid was too narrow)."""
    s0, pl = study.seeds[0], study.plan
    ref = pl.setups[s0].original("single_task", 1.0, "val")
    val = {f"{m}+{k}": delta_mtl(study.record(f"{m}+{k}", s0)["val"], ref, pl.setups[s0].tasks,
                                 pl.convention) for m in pl.searched for k in pl.kinds}
    interior = {p: {f"{k}/seed{s}": analysis.is_interior(study.lam[p][k, s], seen)
                    for (k, s), seen in study.scores[p].items() if len(seen) > 1}
                for p in study.scores}
    return {"adapter_lr": dict(study.lr),
            "adapter_lr_scores": {m: {f"{study.profile.realign.adapter_lr * 3.0 ** k:.3g}": v
                                      for k, v in sc.items()} for m, sc in study.lr_scores.items()},
            "lambda": {k: study.lam_of(k, s0) for k in val}, "val_delta_mtl": val,
            "best_step": {k: study.record(k, s0).get("best_step") for k in val},
            "interior": interior}
