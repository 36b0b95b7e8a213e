"""The regime study (notebook 06): when does realignment rival joint multi-task learning?

The profile's ``regime.knobs`` each move one setting (pretraining strength, encoder width, which
tasks, finetuning learning rate, realignment budget, ...) away from the profile's own values. At
every value (a :class:`Point`) and every seed of ``regime.seeds`` the study trains what the
realignment notebook (03) trains — single-task models and joint MTL, both to the profile's
budget — merges them (task arithmetic and TIES), realigns heads and representations at a λ
re-selected for the realigned model, and measures what might explain the gap to joint MTL:
task-vector sizes and cosines, the merged encoder's feature similarity to the single-task ones,
and how well the pretrained encoder alone serves the tasks (a linear probe).

The λ protocols, Δ_MTL and the paper's claim are :mod:`simo.protocol`'s. Everything is computed
by the cached steps of :mod:`simo.steps` and :mod:`simo.merged`, so points that share runs (the
profile's own values appear under every knob; single-task runs do not depend on the task mix)
share them, and :func:`measure` runs the independent ones side by side with :mod:`simo.jobs`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from simo import analysis, jobs, protocol
from simo.config import KnobConfig, KnobPoint, Profile, knob_profiles
from simo.errors import ConfigError, one_of
from simo.merged import MergeSetup
from simo.protocol import PAPER_CLAIM, claim_holds
from simo.steps import finetuned, model_from, pretrained, tasks_of

PROBE = ("task_arithmetic", 0.0, "head")  # heads realigned on θ0 itself: the probe measure


@dataclasses.dataclass(frozen=True)
class Point:
    """One knob at one value: the profile the study runs there."""

    knob: str
    value: Any
    profile: Profile

    @property
    def label(self) -> str:
        return label_of(self.value)

    @property
    def json_value(self) -> Any:
        """The value as results.json holds it: a list for a task mix, the label for a point."""
        v = self.value
        return list(v) if isinstance(v, tuple) else v.label if isinstance(v, KnobPoint) else v


def label_of(value: Any) -> str:
    """How figures and tables name a knob value: a point's label, a task mix joined by "+"."""
    if isinstance(value, KnobPoint):
        return value.label
    if isinstance(value, tuple):
        return "+".join(value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def _selected(profile: Profile, knobs: Sequence[str] | None) -> list[KnobConfig]:
    """The profile's regime knobs, or the named ones (in the profile's order), names checked."""
    if not profile.regime.knobs:
        raise ConfigError(f"profile {profile.name!r} defines no regime.knobs: run notebook 06 "
                          f"with profile='regime' (or 'smoke'), or add knobs to its profile")
    names = [k.name for k in profile.regime.knobs]
    for n in knobs or ():
        if n not in names:
            raise ConfigError(one_of(n, names, "regime knob"))
    return [k for k in profile.regime.knobs if not knobs or k.name in knobs]


def points(profile: Profile, knobs: Sequence[str] | None = None) -> list[Point]:
    """Every (knob, value) of ``profile.regime`` (or of the named ``knobs``), each as a
    validated profile."""
    return [Point(k.name, v, p) for k in _selected(profile, knobs)
            for v, p in knob_profiles(profile, k, "regime")]


def encoder_of(profile: Profile) -> str:
    """What θ0 is at a setting, in words: a weights file, SimMIM for n steps, or random."""
    if profile.model.weights:
        return f"released weights {profile.model.weights}"
    return f"SimMIM, {profile.pretrain.steps} steps" if profile.pretrain.steps else "random"


def at_base(profile: Profile, pts: Sequence[Point], sweeps: dict[str, list[dict]]) -> dict:
    """The gap at the profile's own setting (θ0 and every budget as the profile has them), with
    its CI, seeds and probe: the regime the study is centred on, named by its encoder."""
    for pt in pts:
        if pt.profile == profile:
            e = next(e for e in sweeps[pt.knob] if e["label"] == pt.label)
            return {"encoder": encoder_of(profile), "knob": pt.knob, "label": pt.label,
                    "gap": e["gap"], "ci95": e["gap_ci95"], "seeds": e["gap_seeds"],
                    "best_method": e["best_method"], "probe": e["measures"]["probe"],
                    "delta_mtl": e["delta_mtl"], "claim": e["claim"]}
    raise ConfigError(f"no knob of profile {profile.name!r} keeps its own setting among its "
                      f"values: list the profile's value under one knob to measure the base")


def knob_rows(profile: Profile, knobs: Sequence[str] | None = None) -> list[dict]:
    """One row per knob for the notebook's table: its name, the settings it moves, its values
    (as the figures label them) and what it stands for."""
    rows = []
    for k in _selected(profile, knobs):
        moved = k.key or ", ".join(dict.fromkeys(s for v in k.values for s in v.settings))
        rows.append({"knob": k.name, "setting": moved or "(the profile's own)",
                     "values": [label_of(v) for v in k.values], "what": k.note})
    return rows


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


def _mean(xs: Sequence[float]) -> float:
    return float(sum(xs) / len(xs))


def measure(pts: Sequence[Point], seeds: Sequence[int], n_images: int = 128,
            desc: str = "regime") -> list[dict]:
    """Δ_MTL of every method and the explaining measures at every point, per seed.

    Trains what the points need (pretrainings, then finetunes, side by side), runs the
    protocol (:func:`simo.protocol.run`) for every distinct setting at once, then reads one
    record per point: ``{"delta_mtl": {method: [per seed]}, "gap": [...], "best": method,
    "cost": {method: {"steps", "samples"}}, "measures": {name: [per seed]}, "lambda": {...},
    "plateau_gain": {"single": x, "joint_mtl": x}}``; ``gap`` = Δ(joint MTL) − Δ(best realigned
    method) for each seed, ``best`` names that method.
    """
    if not pts:
        return []
    prof = pts[0].profile
    pre, runs = training_jobs(pts, seeds)
    jobs.prefetch(prof, pre, desc=f"{desc}: pretraining")
    jobs.prefetch(prof, runs, desc=f"{desc}: single-task and joint MTL runs")
    distinct = _distinct(pts)
    plans = [protocol.plan(p, seeds, p.regime.methods, protocols=("realigned_lambda",),
                           extra=[PROBE]) for p in distinct]
    records = {p: _record(st, n_images) for p, st in zip(distinct, protocol.run(plans, desc))}
    return [records[pt.profile] for pt in pts]


def _record(study: protocol.Study, n_images: int) -> dict:
    """One setting's record (see :func:`measure`), read from the cache."""
    p, methods, seeds = study.profile, study.methods, study.seeds
    tasks = tasks_of(p)
    lam_r = {m: study.lam["realigned_lambda"][m, seeds[0]] for m in methods}
    out: dict[str, Any] = {"delta_mtl": {}, "cost": {}, "measures": {}, "lambda": {}}

    def add(group: str, key: str, value: Any) -> None:
        out[group].setdefault(key, []).append(value)

    plateau: dict[str, list[float]] = {"single": [], "joint_mtl": []}
    for s in seeds:
        setup, single, mtl = study.plan.setups[s], study.single(s), study.mtl(s)
        add("delta_mtl", "joint_mtl", study.delta("joint_mtl", s))
        out["cost"]["joint_mtl"] = {"steps": mtl.meta["steps"], "samples": mtl.meta["samples"]}
        plateau["joint_mtl"].append(max(analysis.plateau_gain(mtl.meta["history"], t)
                                        for t in tasks))
        plateau["single"].append(max(analysis.plateau_gain(single[t.name].meta["history"], t)
                                     for t in tasks))
        for m in methods:
            add("lambda", f"{m} (original heads)", study.lam["original_lambda"][m, s])
            add("delta_mtl", m, study.delta(m, s))
            for kind in protocol.REALIGNMENTS:
                rec = study.record(f"{m}+{kind}", s)
                add("delta_mtl", f"{m}+{kind}", study.delta_of(rec["test"], s))
                out["cost"][f"{m}+{kind}"] = {"steps": rec["steps"], "samples": rec["samples"]}
        add("measures", "probe", study.delta_of(setup.realign(*PROBE)["test"], s))
        for name, v in explain(setup, lam_r[methods[0]], n_images).items():
            add("measures", name, v)
    out["lambda"].update({f"{m} (realigned)": lam_r[m] for m in methods})
    # the best realigned method by its mean over seeds (not a per-seed oracle pick)
    d = out["delta_mtl"]
    out["best"] = max((f"{m}+{k}" for m in methods for k in protocol.REALIGNMENTS),
                      key=lambda k: _mean(d[k]))
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
            "value": pt.json_value, "label": pt.label, "setting": settings.index(pt.profile), "gap": gap["mean"], "gap_ci95": gap["ci95"], "gap_seeds": gap["seeds"],
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


def _probe_line(sweeps: dict[str, list[dict]]) -> str:
    """How the probe and the gap move together along the knob that moves the probe most (the
    pretraining knob, where there is one): the frozen θ0's quality against realignment's gap."""
    k = max(sweeps, key=lambda k: max(e["measures"]["probe"] for e in sweeps[k])
            - min(e["measures"]["probe"] for e in sweeps[k]))
    return (f"Along {k}, the probe (Δ_MTL of θ0 with realigned heads) goes "
            + ", ".join(f"{e['measures']['probe']:+.1f}" for e in sweeps[k]) + " and the gap "
            + ", ".join(f"{e['gap']:+.1f}" for e in sweeps[k]) + " ("
            + ", ".join(e["label"] for e in sweeps[k]) + ").")


def facts(results: dict) -> dict[str, Any]:
    """What notebook 06's results say, as numbers and sentences: the gap's range, its trend under
    each knob, the measure that tracks it, which side it follows, the plateaus and the claim."""
    sweeps, corr, top = results["sweeps"], results["correlations"], results["most_predictive"]
    gaps = [(k, e) for k, v in sweeps.items() for e in v]
    lo, hi = min(gaps, key=lambda ke: ke[1]["gap"]), max(gaps, key=lambda ke: ke[1]["gap"])
    trends = []
    for k, v in sweeps.items():
        first, last = v[0]["gap_seeds"], v[-1]["gap_seeds"]
        trend = ("falls (realignment catches up)" if max(last) < min(first) else
                 "rises (joint MTL pulls ahead)" if min(last) > max(first) else
                 "does not move beyond the spread of its seeds")
        steps = [b["gap"] - a["gap"] for a, b in zip(v, v[1:])]
        if trend[0] in "fr" and not (all(x <= 0 for x in steps) or all(x >= 0 for x in steps)):
            trend += ", not monotonically"
        trends.append(f"{k}: from {v[0]['label']} to {v[-1]['label']} the gap {trend} ("
                      + ", ".join(f"{e['gap']:+.1f}" for e in v) + ").")
    j, b = results["gap_sources"]["joint_mtl"], results["gap_sources"]["best_realigned"]
    side = [("the realigned merge", b), ("joint MTL", j)]
    (name, x), (other, y) = side if abs(b["r"]) > abs(j["r"]) else side[::-1]
    gains = [(g, (k, e["label"], base)) for k, e in gaps for base, g in e["plateau_gain"].items()
             if g == g]  # NaN: no curve to judge (as pandas skips it)
    worst, (wk, wv, wb) = max(gains, key=lambda gw: gw[0])
    single = max((g for g, w in gains if w[2] == "single"), default=float("nan"))
    best, base = results["best_regime"], results["at_base"]
    return {
        "base": f"At the study's own setting (θ0: {base['encoder']}) the gap is "
                f"{base['gap']:+.1f} points (95 % CI [{base['ci95'][0]:+.1f}, "
                f"{base['ci95'][1]:+.1f}], seeds " + ", ".join(f"{g:+.1f}" for g in base["seeds"])
                + f"; best: {base['best_method']}), with a probe Δ_MTL of {base['probe']:+.1f}.",
        "probe": _probe_line(sweeps),
        "range": f"from {lo[1]['gap']:+.1f} points ({lo[0]} = {lo[1]['label']}, best: "
                 f"{lo[1]['best_method']}) to {hi[1]['gap']:+.1f} ({hi[0]} = {hi[1]['label']})",
        "trends": trends, "settings": len({e["setting"] for _, e in gaps}), "top": top,
        "top_r": corr[top], "weak": ", a weak link" if abs(corr[top]) < 0.6 else "",
        "others": ", ".join(f"{m} {r:+.2f}" for m, r in corr.items() if m != top),
        "follows": f"The gap follows {name} (Pearson r {x['r']:+.2f}; its Δ_MTL spans "
                   f"{x['range'][0]:+.1f} to {x['range'][1]:+.1f}) more than {other} (r "
                   f"{y['r']:+.2f}; {y['range'][0]:+.1f} to {y['range'][1]:+.1f}).",
        "plateau": f"{worst:.1%} ({wb} at {wk} = {wv}; single-task runs at most {single:.1%})"
                   + (": all flattened." if worst < 0.02 else ": not every baseline has flattened"
                      + (", but a joint MTL that would still improve could only widen its gap."
                         if wb == "joint_mtl" else ": read small gaps with care.")),
        "claim": f"The paper's claim holds at {best['knob']} = {best['label']}: {best['method']} "
                 f"is {best['gap']:+.1f} points from joint MTL with 1/{best['steps_ratio']:.1f} "
                 f"of its steps and 1/{best['samples_ratio']:.1f} of its labelled images."
        if best["any_holds"] else
        "No tested regime bears out the paper's claim (within 3 points at ≤ 1/6 of the steps and "
        "≤ 1/4 of the labelled images). Smallest gap" + (" within those costs" if
                                                          best["within_cost"] else
                                                          " (no point meets the costs)")
        + f": {best['knob']} = {best['label']}, {best['method']}, {best['gap']:+.1f} points "
          f"(steps ratio {best['steps_ratio']:.1f}, samples ratio {best['samples_ratio']:.1f})."}
