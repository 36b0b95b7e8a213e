"""The regime study (notebook 06): when does realignment rival joint multi-task learning?

The profile's ``regime.knobs`` each move one setting (pretraining strength, encoder width, which
tasks, finetuning learning rate, realignment budget, ...) away from the profile's own values. At
every value (a :class:`Point`) and every seed of ``regime.seeds`` the study trains what the
realignment notebook (03) trains — single-task models and joint MTL, both to the profile's
budget — merges them (task arithmetic and TIES), realigns heads and representations at a λ
re-selected for the realigned model, and measures what might explain the gap to joint MTL:
task-vector sizes and cosines, the merged encoder's feature similarity to the single-task ones,
and how well the pretrained encoder alone serves the tasks (a linear probe).

Everything is computed by the cached steps of :mod:`simo.steps` and :mod:`simo.merged`, so points that share runs
(the profile's own values appear under every knob; single-task runs do not depend on the task
mix) share them, and :func:`prefetch` runs the independent ones side by side with
:mod:`simo.jobs`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from simo import analysis, jobs
from simo.config import Profile, knob_profiles
from simo.errors import ConfigError, one_of
from simo.merged import MergeSetup, merge_setup
from simo.steps import finetuned, model_from, pretrained, tasks_of
from simo.tasks import delta_mtl

KINDS = ("head", "repr")
PAPER_CLAIM = {"gap": 3.0, "steps": 6.0, "samples": 4.0}  # within 3 points, 1/6 steps, 1/4 samples


@dataclasses.dataclass(frozen=True)
class Point:
    """One knob at one value: the profile the study runs there."""

    knob: str
    value: Any
    profile: Profile

    @property
    def label(self) -> str:
        v = self.value
        return "+".join(v) if isinstance(v, tuple) else f"{v:g}" if isinstance(v, float) else str(v)


def points(profile: Profile, knobs: Sequence[str] | None = None) -> list[Point]:
    """Every (knob, value) of ``profile.regime`` (or of the named ``knobs``), each as a
    validated profile."""
    if not profile.regime.knobs:
        raise ConfigError(f"profile {profile.name!r} defines no regime.knobs: run notebook 06 "
                          f"with profile='regime' (or 'smoke'), or add knobs to its profile")
    names = [k.name for k in profile.regime.knobs]
    for n in knobs or ():
        if n not in names:
            raise ConfigError(one_of(n, names, "regime knob"))
    out = []
    for k in profile.regime.knobs:
        if knobs and k.name not in knobs:
            continue
        out += [Point(k.name, v, p) for v, p in knob_profiles(profile, k, "regime")]
    return out


def _distinct(pts: Sequence[Point]) -> list[Profile]:
    return list(dict.fromkeys(p.profile for p in pts))


def _pretrainings(pts: Sequence[Point]) -> list[Profile]:
    """One profile per distinct pretrained encoder (data, model and pretraining settings)."""
    return list({(p.data, p.model, p.pretrain): p for p in _distinct(pts)}.values())


def training_jobs(pts: Sequence[Point], seeds: Sequence[int]) -> tuple[list, list]:
    """(pretraining jobs, finetuning jobs) of every point, each run once, longest first.

    Single-task runs do not depend on the task mix, so they are keyed by a profile whose task
    list is that one task: points sharing a run share its job.
    """
    pre_jobs = [jobs.job(pretrained, p, progress=False) for p in _pretrainings(pts)]
    runs: dict[tuple, tuple] = {}
    for p in _distinct(pts):
        train = (p.data, p.model, p.pretrain, p.finetune)  # what a finetune depends on
        for s in seeds:
            runs.setdefault((*train, tuple(p.tasks), s), (p, list(p.tasks), s))
            for t in p.tasks:
                runs.setdefault((*train, t, s), (p, t, s))
    mtl = [jobs.job(finetuned, p, names, seed=s, progress=False)
           for p, names, s in runs.values() if isinstance(names, list)]
    single = [jobs.job(finetuned, p, t, seed=s, progress=False)
              for p, t, s in runs.values() if isinstance(t, str)]
    return pre_jobs, mtl + single


def _val_reference(setup: MergeSetup) -> dict:
    return setup.original("single_task", 1.0, "val")


def _score(setup: MergeSetup, metrics: dict) -> float:
    return delta_mtl(metrics, _val_reference(setup), setup.tasks)


def original_lambda(setup: MergeSetup, method: str) -> float:
    """λ chosen with the original heads on validation (the paper's code; evaluations only)."""
    grid = setup.profile.merging.lam_grid
    return analysis.select_on_validation(
        lambda lam: _score(setup, setup.original(method, lam, "val")), grid)[0]


def realigned_lambda(setup: MergeSetup, method: str,
                     parallel: bool = True) -> tuple[float, dict[float, float]]:
    """λ chosen for the head-realigned model: coarse-to-fine over the grid, one head
    realignment per value tried (with ``parallel``, each round's values side by side)."""
    p = setup.profile

    def side_by_side(values: list[float]) -> None:
        jobs.prefetch(p, [jobs.job(setup.realign, method, v) for v in values],
                      desc=f"{method}: λ values")

    return analysis.select_on_validation(
        lambda lam: _score(setup, setup.realigned(method, lam, "val")), p.merging.lam_grid,
        p.realign.select_stride, prefetch=side_by_side if parallel else None)


def _second_round(setup: MergeSetup, method: str) -> list[float]:
    """The values :func:`realigned_lambda` scores after its first round (read from the cache)."""
    p = setup.profile
    grid = [float(v) for v in p.merging.lam_grid]
    first = analysis.first_round(grid, p.realign.select_stride)
    score = {v: _score(setup, setup.realigned(method, v, "val")) for v in first}
    b = grid.index(max(first, key=lambda v: (score[v], -v)))  # ties: the smaller λ, as there
    return [grid[i] for i in (b - 1, b + 1) if 0 <= i < len(grid) and grid[i] not in score]


def prefetch(pts: Sequence[Point], seeds: Sequence[int], progress_desc: str = "regime") -> None:
    """Compute everything :func:`measure` reads, independent jobs side by side.

    Order: pretrainings, then finetunes (joint MTL first: the longest), then the original-head λ
    grids and the first round of every realigned-λ search, then (after the searches, which depend
    on their first rounds) every realignment of every seed.
    """
    if not pts:
        return
    prof = pts[0].profile
    pre, runs = training_jobs(pts, seeds)
    jobs.prefetch(prof, pre, desc=f"{progress_desc}: pretraining")
    jobs.prefetch(prof, runs, desc=f"{progress_desc}: single-task and joint MTL runs")
    methods = list(prof.regime.methods)
    distinct = _distinct(pts)
    setups = {(p, s): merge_setup(p, s) for p in distinct for s in seeds}
    first = [jobs.job(setups[p, seeds[0]].realign, m, lam) for p in distinct for m in methods
             for lam in analysis.first_round(p.merging.lam_grid, p.realign.select_stride)]
    evals = [jobs.job(setups[p, s].original, m, lam, "val") for p in distinct for s in seeds
             for m in methods for lam in p.merging.lam_grid]
    jobs.prefetch(prof, first + evals, desc=f"{progress_desc}: λ grids")
    # the second round of every search at once (the best first-round value's neighbours); the
    # searches then finish from the cache, computing a rare third round on their own
    jobs.prefetch(prof, [jobs.job(setups[p, seeds[0]].realign, m, lam) for p in distinct
                         for m in methods for lam in _second_round(setups[p, seeds[0]], m)],
                  desc=f"{progress_desc}: λ refinements")
    lams = {(p, m): realigned_lambda(setups[p, seeds[0]], m, parallel=False)[0]
            for p in distinct for m in methods}
    jobs.prefetch(prof, [jobs.job(setups[p, s].realign, m, lams[p, m], kind)
                         for p in distinct for s in seeds for m in methods for kind in KINDS]
                  + [jobs.job(setups[p, s].realign, "task_arithmetic", 0.0, "head")
                     for p in distinct for s in seeds],
                  desc=f"{progress_desc}: realignments")


def _mean(xs: Sequence[float]) -> float:
    return float(sum(xs) / len(xs))


def measure(point: Point, seeds: Sequence[int], n_images: int = 128) -> dict:
    """Δ_MTL of every method and the explaining measures at one point, per seed.

    Returns ``{"delta_mtl": {method: [per seed]}, "gap": [...], "best": method,
    "cost": {method: {"steps", "samples"}}, "measures": {name: [per seed]}, "lambda": {...},
    "plateau_gain": {"single": x, "joint_mtl": x}}``; ``gap`` = Δ(joint MTL) − Δ(best realigned
    method) for each seed, ``best`` names that method.
    """
    p = point.profile
    methods = list(p.regime.methods)
    tasks = tasks_of(p)
    setups = {s: merge_setup(p, s) for s in seeds}
    lam_r = {m: realigned_lambda(setups[seeds[0]], m, parallel=False)[0] for m in methods}
    out: dict[str, Any] = {"delta_mtl": {}, "cost": {}, "measures": {}, "lambda": {}}

    def add(group: str, key: str, value: Any) -> None:
        out[group].setdefault(key, []).append(value)

    plateau: dict[str, list[float]] = {"single": [], "joint_mtl": []}
    for s in seeds:
        setup = setups[s]
        single = {t.name: finetuned(p, t.name, seed=s) for t in tasks}
        mtl = finetuned(p, list(p.tasks), seed=s)
        ref = {t: a.meta["test"][t] for t, a in single.items()}
        add("delta_mtl", "joint_mtl", delta_mtl(mtl.meta["test"], ref, tasks))
        out["cost"]["joint_mtl"] = {"steps": mtl.meta["steps"], "samples": mtl.meta["samples"]}
        plateau["joint_mtl"].append(max(analysis.plateau_gain(mtl.meta["history"], t)
                                        for t in tasks))
        plateau["single"].append(max(analysis.plateau_gain(single[t.name].meta["history"], t)
                                     for t in tasks))
        for m in methods:
            lam_o = original_lambda(setup, m)
            add("lambda", f"{m} (original heads)", lam_o)
            add("delta_mtl", m, delta_mtl(setup.original(m, lam_o, "test"), ref, tasks))
            for kind in KINDS:
                rec = setup.realign(m, lam_r[m], kind)
                add("delta_mtl", f"{m}+{kind}", delta_mtl(rec["test"], ref, tasks))
                out["cost"][f"{m}+{kind}"] = {"steps": rec["steps"], "samples": rec["samples"]}
        probe = setup.realign("task_arithmetic", 0.0, "head")
        add("measures", "probe", delta_mtl(probe["test"], ref, tasks))
        for name, v in explain(setup, lam_r[methods[0]], n_images).items():
            add("measures", name, v)
    out["lambda"].update({f"{m} (realigned)": lam_r[m] for m in methods})
    # the best realigned method by its mean over seeds (not a per-seed oracle pick)
    d = out["delta_mtl"]
    out["best"] = max((f"{m}+{k}" for m in methods for k in KINDS), key=lambda k: _mean(d[k]))
    out["gap"] = [a - b for a, b in zip(d["joint_mtl"], d[out["best"]])]
    out["plateau_gain"] = {k: max(v) for k, v in plateau.items()}
    return out


def explain(setup: MergeSetup, lam: float, n_images: int = 128) -> dict[str, float]:
    """Measures that might predict the gap, for one seed's merge (task arithmetic at ``lam``):
    mean relative task-vector norm ‖τ_t‖/‖θ0‖, mean pairwise task-vector cosine, and mean
    linear CKA / cosine at the last block between the merged and each single-task encoder."""
    import torch

    from simo.merging import task_vectors

    tvs = task_vectors(setup.pretrained, setup.finetuned)
    norm0 = torch.sqrt(sum((v.double() ** 2).sum() for k, v in setup.pretrained.items()
                           if k in tvs[0]))
    rel = [float(torch.sqrt(sum((v.double() ** 2).sum() for v in tv.values())) / norm0)
           for tv in tvs]
    cos, _ = analysis.task_vector_cosines(tvs, setup.names)
    pairs = [cos[a][b] for i, a in enumerate(setup.names) for b in setup.names[i + 1:]]
    images = setup.data("val")["image"][:n_images]

    def last_block(sd: dict) -> torch.Tensor:
        vit = model_from(setup.profile, setup.tasks[:1], sd).encoder.vit
        return analysis.block_tokens(vit, images)[-1]

    merged = last_block(setup.encoders("task_arithmetic", lam)[setup.names[0]])
    singles = [last_block(ft) for ft in setup.finetuned]
    return {"tv_norm": _mean(rel), "tv_cosine": _mean(pairs) if pairs else 1.0,
            "cka_last": _mean([analysis.linear_cka(merged, f) for f in singles]),
            "cosine_last": _mean([analysis.mean_cosine(merged, f) for f in singles])}


def claim_holds(delta: dict[str, float], cost: dict[str, dict], method: str) -> dict:
    """Does ``method`` meet the paper's claim against joint MTL (PAPER_CLAIM): within 3 points,
    at most 1/6 of its optimizer steps and 1/4 of its labelled samples?"""
    gap = delta["joint_mtl"] - delta[method]
    steps = cost["joint_mtl"]["steps"] / max(cost[method]["steps"], 1)
    samples = cost["joint_mtl"]["samples"] / max(cost[method]["samples"], 1)
    return {"gap": gap, "steps_ratio": steps, "samples_ratio": samples,
            "holds": bool(gap <= PAPER_CLAIM["gap"] and steps >= PAPER_CLAIM["steps"]
                          and samples >= PAPER_CLAIM["samples"])}


def training_seconds(pts: Sequence[Point], seeds: Sequence[int]) -> float:
    """Wall seconds that the points' pretrainings and finetunes took when they were computed
    (each run once; read from the cache, so a warm rerun reports the cold cost)."""
    _, runs = training_jobs(pts, seeds)
    return (sum(pretrained(p, progress=False).meta.get("seconds", 0.0) for p in _pretrainings(pts))
            + sum(run().meta["seconds"] for run in runs))


def summarize(pts: Sequence[Point], records: Sequence[dict]) -> dict[str, list[dict]]:
    """The results contract: ``{knob: [{"value", "gap", "gap_ci95", "delta_mtl": {method: mean},
    "measures": {name: mean}, "claim": {...}, ...}]}``, one entry per value in the knob's order;
    ``setting`` numbers the distinct profiles (the profile's own appears under every knob).

    ``claim`` checks the paper's claim (:func:`claim_holds`) for the realigned method with the
    best mean Δ_MTL at that point.
    """
    out: dict[str, list[dict]] = {}
    settings = _distinct(pts)
    for pt, rec in zip(pts, records):
        gap = analysis.mean_ci(rec["gap"])
        delta = {k: _mean(v) for k, v in rec["delta_mtl"].items()}
        best = rec["best"]
        out.setdefault(pt.knob, []).append({
            "value": list(pt.value) if isinstance(pt.value, tuple) else pt.value,
            "label": pt.label, "setting": settings.index(pt.profile), "gap": gap["mean"], "gap_ci95": gap["ci95"], "gap_seeds": gap["seeds"],
            "delta_mtl": delta, "delta_mtl_seeds": rec["delta_mtl"],
            "measures": {k: _mean(v) for k, v in rec["measures"].items()},
            "best_method": best, "claim": claim_holds(delta, rec["cost"], best),
            "claim_ta_repr": claim_holds(delta, rec["cost"], "task_arithmetic+repr")
            if "task_arithmetic+repr" in delta else None,
            "cost": rec["cost"], "lambda": rec["lambda"], "plateau_gain": rec["plateau_gain"]})
    return out


def correlations(sweeps: dict[str, list[dict]]) -> dict[str, float]:
    """Pearson correlation across all points (distinct settings) between the gap and each
    measure: which measure tracks when realignment falls behind joint MTL."""
    rows = _distinct_entries(sweeps)
    out = {}
    for name in rows[0]["measures"]:
        xs = [e["measures"][name] for e in rows]
        ys = [e["gap"] for e in rows]
        out[name] = _pearson(xs, ys)
    return out


def gap_sources(sweeps: dict[str, list[dict]]) -> dict[str, dict]:
    """Does the gap move with joint MTL or with the best realigned merge? Their Pearson r with
    the gap and their ranges, across the distinct settings."""
    rows = _distinct_entries(sweeps)
    gaps = [e["gap"] for e in rows]
    out = {}
    for name, get in (("joint_mtl", lambda e: e["delta_mtl"]["joint_mtl"]),
                      ("best_realigned", lambda e: e["delta_mtl"][e["best_method"]])):
        xs = [get(e) for e in rows]
        out[name] = {"r": _pearson(xs, gaps), "range": [min(xs), max(xs)]}
    return out


def _distinct_entries(sweeps: dict[str, list[dict]]) -> list[dict]:
    """One entry per distinct setting: the profile's own appears under every knob."""
    return list({e["setting"]: e for v in sweeps.values() for e in v}.values())


def _pearson(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Pearson's r (NaN when either side is constant), as pandas computes it."""
    import pandas as pd

    return float(pd.Series(xs, dtype=float).corr(pd.Series(ys, dtype=float)))


def best_regime(sweeps: dict[str, list[dict]]) -> dict:
    """The point where realignment comes closest to joint MTL among those meeting the claim's
    cost limits (≤ 1/6 steps, ≤ 1/4 samples); ``holds`` says whether the gap is within 3 points.
    Falls back to the smallest gap overall (``within_cost`` false) when no point meets them."""
    entries = [(k, e) for k, v in sweeps.items() for e in v]
    cheap = [(k, e) for k, e in entries if e["claim"]["steps_ratio"] >= PAPER_CLAIM["steps"]
             and e["claim"]["samples_ratio"] >= PAPER_CLAIM["samples"]]
    k, e = min(cheap or entries, key=lambda ke: ke[1]["claim"]["gap"])
    return {"knob": k, "value": e["value"], "label": e["label"], "method": e["best_method"],
            "gap": e["claim"]["gap"], "gap_ci95": e["gap_ci95"],
            "steps_ratio": e["claim"]["steps_ratio"], "samples_ratio": e["claim"]["samples_ratio"],
            "within_cost": bool(cheap), "holds": e["claim"]["holds"],
            "any_holds": any(e["claim"]["holds"] for _, e in entries)}
