"""Is θ0 a foundation model? The checks of notebook 01, on any profile's encoder.

A foundation model, in the sense both papers assume, (i) already carries most of each task: a
frozen linear probe reads it; (ii) makes finetuning clearly better than starting from random
weights; (iii) makes it fast; (iv) is only moved a little by it, so task vectors are small edits
and task arithmetic keeps much. Each check compares three starting points (:data:`INITS`): the
profile's encoder, random weights and the first study's weak SimMIM θ0, at equal finetuning steps.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

from torch import Tensor

from simo import cache, jobs, paths
from simo.analysis import curve, higher_is_better, mean_ci, select_on_validation
from simo.config import Profile, with_settings
from simo.errors import TaskError, one_of
from simo.foundation import _config, probe
from simo.models import build_model
from simo.models.encoder import file_sha256
from simo.merged import merge_setup
from simo.steps import finetuned, pretrained
from simo.tasks import Task, delta_mtl, get_tasks, normalized_performance

INITS = ("foundation", "scratch", "weak")  # θ0 = the released encoder | random | the first study's


def weak_profile(profile: Profile) -> Profile:
    """``profile`` with the first study's θ0: SimMIM on its pretraining scenes (``pretrain.*``)
    instead of the released weights. The comparison the release must win."""
    return with_settings(profile, {"model.weights": None, "model.weights_sha256": None})


def finetune_run(profile: Profile, task: str, seed: int, init: str,
                 progress: bool = True) -> cache.Artifact:
    """The single-task finetune of ``task`` from one of :data:`INITS`, at the profile's budget."""
    if init not in INITS:
        raise TaskError(one_of(init, INITS, "init"))
    if init == "weak":
        return finetuned(weak_profile(profile), task, seed=seed, progress=progress)
    return finetuned(profile, task, seed=seed, progress=progress,
                     init="scratch" if init == "scratch" else "pretrained")


def longer_profile(profile: Profile) -> Profile:
    """``profile`` with twice the finetuning steps, single-task and joint: is a deficit, or a
    baseline's plateau, a matter of budget? (A longer run, not a flat tail under a decaying lr.)"""
    ft = profile.finetune
    return with_settings(profile, {"finetune.steps": 2 * ft.steps,
                                   "finetune.mtl_steps": 2 * ft.mtl_steps})


LR_FACTORS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0)  # the finetuning lr sweep: multiples of finetune.lr


def lr_profiles(profile: Profile, steps: int | None = None) -> list[tuple[float, Profile]]:
    """``(lr, profile at that lr)`` for the sweep of :data:`LR_FACTORS` around ``finetune.lr``,
    each at ``steps`` finetuning steps (default: the profile's)."""
    ft = profile.finetune
    lrs = [float(f"{f * ft.lr:.3g}") for f in LR_FACTORS]
    return [(lr, with_settings(profile, {"finetune.lr": lr, "finetune.steps": steps or ft.steps}))
            for lr in lrs]


def lr_jobs(profile: Profile, seed: int = 0, steps: int | None = None) -> list:
    """The single-task runs of :func:`lr_sweep`, for :func:`simo.jobs.prefetch`."""
    return [jobs.job(finetuned, q, t, seed=seed, progress=False)
            for _, q in lr_profiles(profile, steps) for t in profile.tasks]


def lr_sweep(profile: Profile, seed: int = 0, steps: int | None = None) -> dict:
    """Single-task finetunes of ``seed`` at each lr of :func:`lr_profiles` (``steps`` each: the lr
    is chosen first, at a shorter budget, then the steps by the convergence check of notebook 03),
    judged on validation:
    ``{"val": {lr: {task: main metric}}, "points": {lr: mean normalized points}, "best": lr,
    "current": finetune.lr, "interior": bool}``. Points are 100 × each task's main metric over
    the current lr's (lower-is-better metrics inverted), so 100 = the profile's choice."""
    tasks = get_tasks(profile.tasks)
    val = {lr: {t.name: finetuned(q, t.name, seed=seed).meta["val"][t.name][t.main_metric]
                for t in tasks} for lr, q in lr_profiles(profile, steps)}
    cur = val[profile.finetune.lr]
    points = {lr: sum(100 * (v[t.name] / cur[t.name] if higher_is_better(t) else
                             cur[t.name] / v[t.name]) for t in tasks) / len(tasks)
              for lr, v in val.items()}
    best = max(points, key=points.get)
    return {"val": val, "points": points, "best": best, "current": profile.finetune.lr,
            "interior": min(points) < best < max(points),
            "steps": steps or profile.finetune.steps}


def evidence_jobs(profile: Profile, seeds: Sequence[int]) -> list:
    """Every run the evidence needs, weak θ0 first (its finetunes wait for it)."""
    return ([jobs.job(pretrained, weak_profile(profile), progress=False)]
            + [jobs.job(finetune_run, profile, t, s, init, progress=False)
               for s in seeds for init in INITS for t in profile.tasks]
            + [jobs.job(finetuned, longer_profile(profile), t, seed=seeds[0], init="scratch",
                        progress=False) for t in profile.tasks])


def steps_to_fraction(history: Sequence[dict], task: Task, frac: float = 0.95) -> int:
    """First recorded step whose main validation metric is within ``frac`` of the final value
    (in normalized terms: v/final for higher-is-better metrics, final/v for lower)."""
    steps, values = curve(history, task.name, task.main_metric)
    hib = higher_is_better(task)
    final = values[-1]
    for s, v in zip(steps, values):
        ratio = v / final if hib else final / max(v, 1e-12)
        if ratio >= frac:
            return int(s)
    return int(steps[-1])


def tv_norm_ratio(pretrained: dict[str, Tensor], finetuned: dict[str, Tensor]) -> float:
    """‖τ‖ / ‖θ0‖ over the encoder's float tensors: how far a finetune moved from θ0."""
    num = sum(float((finetuned[k].float() - v.float()).pow(2).sum())
              for k, v in pretrained.items() if v.is_floating_point())
    den = sum(float(v.float().pow(2).sum()) for v in pretrained.values() if v.is_floating_point())
    return (num / den) ** 0.5


def ta_original_heads(profile: Profile, seed: int = 0) -> dict:
    """Task arithmetic with the original heads, λ chosen on val (the official protocol): the
    chosen λ and the test Δ_MTL (normalized convention) against the single-task models."""
    setup = merge_setup(profile, seed)
    single = {s: setup.original("single_task", 0.0, s) for s in ("val", "test")}

    def score(lam: float, split: str = "val") -> float:
        return delta_mtl(setup.original("task_arithmetic", lam, split), single[split],
                         setup.tasks)

    lam, _ = select_on_validation(score, profile.merging.lam_grid)
    return {"lam": lam, "delta_mtl": score(lam, "test")}


PROBE_LONG = 5  # the long probe: this many times foundation.probe_steps (is the probe budget the limit?)


def encoder_probe(profile: Profile, init: str, split: str = "test",
                  steps: int | None = None) -> dict[str, dict[str, float]]:
    """The frozen linear probe of θ0 (``init`` of :data:`INITS`), cached: how much of each task a
    head can read off the encoder before any finetuning (``steps``: foundation.probe_steps)."""
    p = weak_profile(profile) if init == "weak" else profile
    if init == "scratch":
        state, key = build_model(p, [], seed=0).encoder.vit.state_dict(), "random-seed-0"
    else:
        art = pretrained(p, progress=False)
        state, key = art.tensors(), art.key
    return _memo_probe(profile, state, key, split, steps or profile.foundation.probe_steps)


def _memo_probe(profile: Profile, state: dict[str, Tensor], key: str, split: str,
                steps: int) -> dict[str, dict[str, float]]:
    cfg = {"encoder": key, "split": split, "steps": steps, "probe": _config(profile)["probe"],
           "data": dataclasses.asdict(profile.data)}
    return cache.memo("probe", cfg, lambda: probe(profile, state, steps=steps, split=split))


def finetuned_probe(profile: Profile, task: str, seed: int) -> dict[str, dict[str, float]]:
    """The same linear probe on the *finetuned* encoder of ``task``: what a linear head can read
    when the features carry the task (the probe's own ceiling)."""
    art = finetune_run(profile, task, seed, "foundation", progress=False)
    return _memo_probe(profile, art.tensors("encoder."), art.key, "test",
                       profile.foundation.probe_steps)


def evidence(profile: Profile, seeds: Sequence[int]) -> dict:
    """Notebook 01's ``"foundation"`` results: per task the probe (normalized points of the
    foundation's single-task model, seed ``seeds[0]``), the gain of the foundation finetune over
    scratch and over the weak θ0 (% relative on the test main metric, mean and 95 % CI over
    ``seeds``), steps to 95 % of the final val metric and ‖τ‖/‖θ0‖; and, per θ0, task arithmetic
    with the original heads."""
    tasks = get_tasks(list(profile.tasks), num_classes=profile.data.num_classes)
    runs = {(t.name, s, i): finetune_run(profile, t.name, s, i, progress=False)
            for t in tasks for s in seeds for i in INITS}
    probes = {i: encoder_probe(profile, i) for i in INITS}
    theta0 = pretrained(profile, progress=False).tensors()
    weak0 = pretrained(weak_profile(profile), progress=False).tensors()
    out: dict = {"tasks": {}}
    for t in tasks:
        def main(init: str, s: int) -> float:
            return runs[t.name, s, init].meta["test"][t.name][t.main_metric]

        def gain(other: str) -> dict:
            return mean_ci([gain_pct(t, main("foundation", s), main(other, s)) for s in seeds])

        ref = {t.name: runs[t.name, seeds[0], "foundation"].meta["test"][t.name]}
        by_init = {
            "probe_points": {i: 100 * points(t, probes[i][t.name], ref[t.name]) for i in INITS},
            "steps_to_95pct": {i: steps_to_fraction(runs[t.name, seeds[0], i].meta["history"], t)
                               for i in INITS},
            "tv_norm_ratio": {i: tv_norm_ratio(theta0 if i == "foundation" else weak0,
                                               runs[t.name, seeds[0], i].tensors("encoder."))
                              for i in ("foundation", "weak")},
            "test": {i: mean_ci([main(i, s) for s in seeds]) for i in INITS},
        }
        longer = finetuned(longer_profile(profile), t.name, seed=seeds[0], init="scratch",
                           progress=False).meta["test"][t.name][t.main_metric]
        long_probe = encoder_probe(profile, "foundation", steps=PROBE_LONG
                                   * profile.foundation.probe_steps)[t.name]
        out["tasks"][t.name] = {
            "main_metric": t.main_metric,
            # what limits the probe: its budget (5x the steps) or the features (the same probe on
            # the finetuned encoder reads the task when the features carry it)
            "probe_points_long": 100 * points(t, long_probe, ref[t.name]),
            "probe_points_finetuned_encoder": 100 * points(
                t, finetuned_probe(profile, t.name, seeds[0])[t.name], ref[t.name]),
            # seed 0 against scratch at twice the steps: how much of the gain a longer run buys
            "gain_vs_scratch_2x_steps_pct": gain_pct(t, main("foundation", seeds[0]), longer),
            "probe_points": by_init["probe_points"]["foundation"],
            "gain_vs_scratch_pct": gain("scratch"), "gain_vs_weak_pct": gain("weak"),
            "steps_to_95pct": by_init["steps_to_95pct"]["foundation"],
            "tv_norm_ratio": by_init["tv_norm_ratio"]["foundation"],
            "by_init": by_init,
        }
    out["task_arithmetic"] = {"foundation": ta_original_heads(profile, seeds[0]),
                              "weak": ta_original_heads(weak_profile(profile), seeds[0])}
    w = profile.model.weights
    out["weights_sha256"] = file_sha256(paths.repo_file(w)) if w else None
    out["objective"] = profile.foundation.objective if w else "simmim (weak, pretrain.*)"
    out["seeds"] = list(seeds)
    return out


def points(task: Task, metrics: dict[str, float], ref: dict[str, float]) -> float:
    """``metrics`` of one task as a fraction of ``ref`` (normalized performance, 1 = as good)."""
    return normalized_performance({task.name: metrics}, {task.name: ref}, [task])[task.name]


def gain_pct(task: Task, value: float, ref: float) -> float:
    """How much better ``value`` is than ``ref`` on the task's main metric, in % of ``ref``."""
    return 100 * (value - ref) / ref * (1 if higher_is_better(task) else -1)


def facts(results: Mapping, plateau_tol: float) -> list[str]:
    """Notebook 01's closing lines, from its results: per task, how much θ0 gives over scratch and
    the weak θ0, how readable its frozen features are, task arithmetic from each θ0, and whether
    the single-task runs reached their plateau (a relative move < ``plateau_tol``)."""
    evidence, plateau = results["foundation"], results["plateau_gain"]
    ev, ta = evidence["tasks"], evidence["task_arithmetic"]
    lines = [f"- θ0: {evidence['objective']} (sha256 {str(evidence['weights_sha256'])[:12]}…)."]
    for n, r in ev.items():
        g, gw, b = r["gain_vs_scratch_pct"], r["gain_vs_weak_pct"], r["by_init"]
        lines.append(
            f"  {n}: probe {r['probe_points']:.0f} points; finetuned {g['mean']:+.1f} % over "
            f"scratch [{g['ci95'][0]:+.1f}, {g['ci95'][1]:+.1f}], {gw['mean']:+.1f} % over the weak "
            f"θ0, {r['gain_vs_scratch_2x_steps_pct']:+.1f} % over scratch at twice the steps; 95 % "
            f"after {r['steps_to_95pct']} steps (scratch {b['steps_to_95pct']['scratch']}); "
            f"‖τ‖/‖θ0‖ {r['tv_norm_ratio']:.3f} (weak θ0: {b['tv_norm_ratio']['weak']:.3f}).")
    clear = [n for n, r in ev.items() if r["gain_vs_scratch_pct"]["ci95"][0] >= 10]
    lines.append(f"- Finetuning from θ0 beats scratch by >= 10 % (whole CI) on {len(clear)}/"
                 f"{len(ev)} tasks" + ("." if len(clear) == len(ev) else
                                       f"; not on: {sorted(set(ev) - set(clear))}."))
    low = [n for n, r in ev.items() if r["probe_points"] < 70]
    lines.append(f"- The frozen probe reaches 70 normalized points on {len(ev) - len(low)}/{len(ev)} "
                 "tasks" + ("." if not low else f"; below on: {low}."))
    for n in low:
        r = ev[n]
        limit = ("frozen features, not the probe, are the limit." if
                 r["probe_points_finetuned_encoder"] - r["probe_points_long"] > 10 else
                 "probe's budget or head is the limit.")
        lines.append(f"  {n}: {r['probe_points']:.0f} points; 5x the probe's steps "
                     f"{r['probe_points_long']:.0f}; the same probe on the finetuned encoder "
                     f"{r['probe_points_finetuned_encoder']:.0f}: the {limit}")
    lines.append(f"- Task arithmetic with the original heads (λ on val): Δ_MTL "
                 f"{ta['foundation']['delta_mtl']:+.1f} (λ {ta['foundation']['lam']}) from the "
                 f"foundation θ0, {ta['weak']['delta_mtl']:+.1f} (λ {ta['weak']['lam']}) from the "
                 "weak θ0 (normalized convention, test).")
    sw = results["lr_sweep"]
    lines.append(f"- Finetuning lr on validation (mean points, 100 = the profile's {sw['current']:g}): "
                 + ", ".join(f"{lr} {v:.1f}" for lr, v in sw["points"].items())
                 + f"; best {sw['best']:g}" + ("" if sw["interior"] else " (on the sweep's edge)")
                 + ("; the profile's lr is the best." if float(sw["best"]) == sw["current"] else
                    "; the profile's lr is not the best: the gallery's runs are under-tuned."))
    moved = ", ".join(f"{k} {v:+.1%}" for k, v in plateau.items())
    lines.append(f"- {sum(abs(v) < plateau_tol for v in plateau.values())}/{len(plateau)} "
                 f"single-task runs moved less than {plateau_tol:.0%} over their last quarter "
                 f"({moved}).")
    return lines
