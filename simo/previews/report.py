"""Notebook 05's report: previews judged against real weighted finetuning, and what it says.

The cached steps (:mod:`simo.previews.grids`) give metrics per α; this module turns them into task
points, compares every preview grid (per posterior kind, seed and reading) with the real runs,
averages over seeds, times the two ways of scanning α and writes the closing facts. Posterior
kinds come from :data:`simo.previews.KINDS`, so a new kind needs no change here. Imported by the
notebook only: nothing that keys a cached step imports it.

Three ground truths (:data:`simo.previews.TRUTHS`): AdamW, IVON and SGD weighted finetuning. A
preview is only tested where the truth moves with α, so the facts say which truths are flat and
judge the regret on the one that moves most. The headline error is the interior MAE (every task
weighted); the corners (some α_t = 0) differ by construction and are reported apart.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from simo import jobs, plots
from simo.config import Profile
from simo.previews.grids import (KINDS, SGD_LRS, TRUTHS, preview_grid, previewer,
                                 previews_profile, runs, sensitivity as sensitivity_sweeps,
                                 sgd_lr_choice, sgd_run, uniform_alpha, weighted_run)
from simo.previews.judge import compare, interior, task_points
from simo.previews.posterior import simplex_grid
from simo.steps import OPTIMIZERS, finetuned, tasks_of
from simo.tasks import Task

BEST_FIRST = ["multi_ivon_hess", "ivon_hess", "adamw_sg", "isotropic"]  # the paper's ordering
TARGET = "ivon_hess"  # the kind the paper recommends: the regret target and the settings sweep
HEADS = {"original": "single-task heads as they are", "realigned": "heads realigned on the preview"}
# the readings judged: (heads of the preview, ground truth's optimizer) -> suffix of results keys
READINGS = {"realigned": ("realigned", "adamw", ""),
            "original": ("original", "adamw", "_original_heads"),
            "vs_ivon": ("realigned", "ivon", "_vs_ivon"),
            "vs_sgd": ("realigned", "sgd", "_vs_sgd"),
            "original_vs_sgd": ("original", "sgd", "_original_heads_vs_sgd")}
TRUTH_NAMES = {"adamw": "AdamW", "ivon": "IVON", "sgd": "SGD"}
FLAT = 2.0  # points: a truth whose interior mean points span less has nothing to preview


@dataclasses.dataclass(frozen=True)
class Study:
    """What every table and figure of notebook 05 is read against: the profiles, the weighted
    tasks, the α grid, the seeds, and per posterior kind the seeds of its preview grids."""

    profile: Profile  # the notebook's (preview grids and ground truth key on it)
    pp: Profile  # previews_profile(profile): the per-task runs'
    tasks: list[Task]
    alphas: list[tuple[float, ...]]
    seeds: list[int]  # of the per-task runs
    gt_seeds: list[int]  # of the ground-truth grid
    kinds: dict[str, list[int]]  # kind -> seeds of its preview grids
    labels: dict[str, str]  # kind -> its name in figures and prose

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tasks]


def labels(sg_estimator: str, components: int) -> dict[str, str]:
    """Readable kind names; a squared-gradient precision names its estimator, a mixture its K."""
    return {m: plots.display_name(m) + (f" ({sg_estimator})" if k.precision == "sg" else "")
            + (f" (K={components})" if k.mixture else "") for m, k in KINDS.items()}


def study(profile: Profile) -> Study:
    """The :class:`Study` of ``profile``. A mixture reads the same runs whatever its seed, so it
    gets one grid; every other kind one grid per per-task seed (the previews' seed spread)."""
    pp, pv = previews_profile(profile), profile.previews
    seeds = list(pv.seeds)
    tasks = tasks_of(pp)
    kinds = {m: seeds[:1] if k.mixture else seeds for m, k in KINDS.items()}
    return Study(profile, pp, tasks, simplex_grid(len(tasks), pv.n_alpha), seeds,
                 list(pv.gt_seeds), kinds, labels(pv.sg_estimator, pv.components))


def describe(st: Study) -> str:
    """One line on what the notebook runs: tasks, α grid, steps and seeds."""
    ft = st.pp.finetune
    return (f"tasks {st.names} | {len(st.alphas)} α | every run {ft.head_steps} head + {ft.steps} "
            f"full steps | per-task seeds {st.seeds} | ground-truth seeds {st.gt_seeds}")


def training_jobs(st: Study) -> list:
    """Every training run, for :func:`simo.jobs.prefetch`, in the order they wait for each other:
    SGD at uniform α per learning rate of :data:`SGD_LRS` (its choice), per task and seed an
    AdamW and an IVON run (the posteriors; seed 0's AdamW runs are also the reference of the SGD
    choice), and real weighted finetuning at every α with each of :data:`TRUTHS` (SGD last)."""
    return ([jobs.job(sgd_run, st.profile, uniform_alpha(st.pp), 0, lr, progress=False)
             for lr in SGD_LRS]
            + [jobs.job(finetuned, st.pp, t, seed=s, optimizer=o, progress=False)
               for o in OPTIMIZERS for s in st.seeds for t in st.names]
            + [jobs.job(weighted_run, st.profile, a, seed=s, optimizer=o, progress=False)
               for o in TRUTHS for s in st.gt_seeds for a in st.alphas])


def grid_jobs(st: Study) -> list:
    """The preview grid of every kind and seed, for :func:`simo.jobs.prefetch`."""
    return [jobs.job(preview_grid, st.profile, m, s) for m, ss in st.kinds.items() for s in ss]


def grids(st: Study) -> dict[str, dict[int, dict]]:
    """``{kind: {seed: preview_grid}}`` (cached)."""
    return {m: {s: preview_grid(st.profile, m, s) for s in ss} for m, ss in st.kinds.items()}


def reference(st: Study) -> dict[str, dict[str, float]]:
    """Per task and metric, the seed mean of its AdamW single-task runs' test metrics: the 100
    points of the same budget, so a preview and the truth are judged on one scale."""
    out = {}
    for t in st.names:
        tests = [finetuned(st.pp, t, seed=s).meta["test"][t] for s in st.seeds]
        out[t] = {k: float(np.mean([m[k] for m in tests])) for k in tests[0]}
    return out


def mean_points(st: Study, ref: Mapping, seed_runs: Sequence[Sequence[Mapping]]
                ) -> dict[str, list]:
    """Seed mean of per-α task points, from per-seed lists of metrics (one per α)."""
    per = [task_points(r, ref, st.tasks) for r in seed_runs]
    return {t: list(np.mean([p[t] for p in per], axis=0)) for t in st.names}


def truth(st: Study, ref: Mapping) -> dict[str, dict[str, list]]:
    """``{optimizer: {task: points per α}}`` of real weighted finetuning (every one of
    :data:`TRUTHS`), ground-truth seed mean."""
    return {o: mean_points(st, ref, [[weighted_run(st.profile, a, seed=s, optimizer=o).meta["test"]
                                      for a in st.alphas] for s in st.gt_seeds])
            for o in TRUTHS}


def sgd_choice(st: Study) -> dict:
    """How SGD's learning rate was chosen (results.json ``sgd_lr``): :func:`sgd_lr_choice`."""
    return sgd_lr_choice(st.profile)


def truth_motion(alphas: Sequence[Sequence[float]], truth: Mapping) -> dict:
    """Per ground truth, how much its mean task points move over the interior α: ``{"range",
    "best" (the α it peaks at), "flat" (range < :data:`FLAT` points)}`` (results.json
    ``truth_motion``). A flat truth picks any α as well as another: no regret tests a preview."""
    inner = interior(alphas)
    out = {}
    for o, curves in truth.items():
        c = mean_curve(curves)[inner]
        rng = float(c.max() - c.min())
        out[o] = {"range": rng, "best": list(alphas[inner[int(np.argmax(c))]]), "flat": rng < FLAT}
    return out


def describe_truth(sgd: Mapping, motion: Mapping) -> str:
    """Two lines: SGD's chosen lr (of :func:`sgd_choice`) and how each truth moves with α."""
    edge = " (at the edge of the grid)" if sgd["edge"] else ""
    moves = {o: f"range {m['range']:.1f} points, best α {m['best']}{', flat' if m['flat'] else ''}"
             for o, m in motion.items()}
    return f"SGD lr {sgd['lr']:g} of {sgd['lrs']}{edge}\n{moves}"


def interior_axis(st: Study, truth: Mapping) -> tuple[list[int], list, np.ndarray]:
    """The interior α (indices), their x positions (α of the first task for two tasks, else the
    grid order) and AdamW's mean task points there: the axes of the sensitivity figure."""
    inner = interior(st.alphas)
    x = [st.alphas[i][0] for i in inner] if len(st.tasks) == 2 else list(range(len(inner)))
    return inner, x, mean_curve(truth["adamw"])[inner]


def judged_truth(motion: Mapping) -> str:
    """The truth regrets are judged on: the one that moves most with α."""
    return max(motion, key=lambda o: motion[o]["range"])


def mixture_components(st: Study, grids: Mapping) -> dict:
    """``{kind: {seed: [{task: component} per α]}}`` of the mixture kinds: whose run's heads read
    each task (results.json ``components``)."""
    return {m: {str(s): grids[m][s]["components"] for s in ss}
            for m, ss in st.kinds.items() if KINDS[m].mixture}


def mean_curve(curves: Mapping[str, Sequence[float]]) -> np.ndarray:
    """Mean task points per α: the score a best-α choice ranks."""
    return np.mean([curves[t] for t in curves], axis=0)


def predictions(st: Study, ref: Mapping, grids: Mapping) -> dict:
    """``{heads: {kind: {seed: {task: points per α}}}}`` of the preview grids, per reading."""
    return {h: {m: {s: task_points(grids[m][s][h], ref, st.tasks) for s in st.kinds[m]}
                for m in st.kinds} for h in HEADS}


def verdicts(st: Study, pred: Mapping, truth: Mapping) -> dict:
    """:func:`simo.previews.compare` of every kind and seed, per reading of :data:`READINGS`."""
    return {r: {m: {s: compare(pred[h][m][s], truth[o], st.alphas) for s in st.kinds[m]}
                for m in st.kinds} for r, (h, o, _) in READINGS.items()}


def summary(st: Study, verdicts: Mapping) -> dict:
    """Seed means per reading (quality per task, regret, hypervolume gap, interior and corner MAE
    over tasks), the per-seed MAEs and regret, and per reading the kinds ordered by interior MAE:
    the results keys of the judging, named as in results.json."""
    avg = lambda xs: float(np.mean(xs))  # noqa: E731
    out: dict = {}
    for r, (_, _, suffix) in READINGS.items():
        v = verdicts[r]
        out["quality" + suffix] = {m: {t: {k: avg([x["quality"][t][k] for x in v[m].values()])
                                           for k in ("mae", "mae_interior", "mae_corners",
                                                     "spearman")}
                                       for t in st.names} for m in st.kinds}
        out["regret" + suffix] = {m: avg([x["regret"] for x in v[m].values()]) for m in st.kinds}
        out["hypervolume_gap" + suffix] = {m: avg([x["hypervolume_gap"] for x in v[m].values()])
                                           for m in st.kinds}
    for k in ("mae", "mae_interior", "mae_corners"):
        out[f"{k}_seeds"] = {r: {m: [float(np.mean([x["quality"][t][k] for t in st.names]))
                                     for x in verdicts[r][m].values()] for m in st.kinds}
                             for r in READINGS}
    for r, (_, _, suffix) in READINGS.items():
        for k in ("mae_interior", "mae_corners"):
            out[k + suffix] = {m: avg(out[f"{k}_seeds"][r][m]) for m in st.kinds}
    out["ordering"] = {r: ordering(out["mae_interior_seeds"][r]) for r in READINGS}
    out["regret_seeds"] = {r: {m: [x["regret"] for x in verdicts[r][m].values()] for m in st.kinds}
                           for r in verdicts}
    return out


def ordering(seeds: Mapping[str, Sequence[float]]) -> list[dict]:
    """Kinds best first by their seed-mean error, each with its seed range, so the paper's
    ordering (:data:`BEST_FIRST`) can be checked and overlapping seeds seen."""
    rows = [{"kind": m, "mae_interior": float(np.mean(v)), "range": [min(v), max(v)]}
            for m, v in seeds.items()]
    return sorted(rows, key=lambda row: row["mae_interior"])


def reading_name(reading: str) -> str:
    """``realigned heads vs AdamW``: a reading of :data:`READINGS` in words."""
    h, o, _ = READINGS[reading]
    return f"{h} heads vs {TRUTH_NAMES[o]}"


def headline_table(st: Study, summ: Mapping) -> pd.DataFrame:
    """One row per kind: the headline (interior MAE, mean over tasks and seeds) per reading, the
    corners' MAE apart, and the regret against each ground truth (realigned heads)."""
    rows = {}
    for m in st.kinds:
        row = {f"interior MAE, {reading_name(r)}": summ["mae_interior" + sfx][m]
               for r, (_, _, sfx) in READINGS.items()}
        row.update({f"corner MAE, {reading_name(r)}": summ["mae_corners" + sfx][m]
                    for r, (_, _, sfx) in READINGS.items() if r in ("realigned", "original")})
        row.update({f"regret vs {TRUTH_NAMES[o]}": summ["regret" + sfx][m]
                    for _, (h, o, sfx) in READINGS.items() if h == "realigned"})
        rows[st.labels[m]] = row
    return pd.DataFrame(rows).T


def quality_table(st: Study, summ: Mapping) -> pd.DataFrame:
    """One row per kind and reading (original, realigned heads), against AdamW finetuning: MAE
    and Spearman per task, regret and hypervolume gap."""
    rows = {}
    for m in st.kinds:
        for h in ("original", "realigned"):
            sfx = READINGS[h][2]
            q = summ["quality" + sfx][m]
            rows[(st.labels[m], h)] = {**{f"MAE {t}": q[t]["mae"] for t in st.names},
                                       **{f"Spearman {t}": q[t]["spearman"] for t in st.names},
                                       "regret (points)": summ["regret" + sfx][m],
                                       "hypervolume gap": summ["hypervolume_gap" + sfx][m]}
    return pd.DataFrame(rows).T


def sensitivity_jobs(st: Study) -> list:
    """The :data:`TARGET` preview grids (first seed) of every ``previews.sensitivity`` value."""
    s0 = st.kinds[TARGET][0]
    return [jobs.job(preview_grid, p, TARGET, s0)
            for *_, vals in sensitivity_sweeps(st.profile) for _, p in vals]


def sweep(st: Study, ref: Mapping, truth: Mapping, key: str,
          readings: Sequence[tuple[object, bool, Sequence[Mapping]]]) -> tuple[dict, list]:
    """One setting's sweep from ``(value, is default, realigned-head metrics per α)``: its
    results record (regret, picked α, MAE per value against AdamW finetuning; ``regret_vs_<o>``
    against each other truth in ``truth``) and per value ``(value, default, points,
    comparison)`` for the figure."""
    rows, grid = [], []
    others = {sfx: o for _, (h, o, sfx) in READINGS.items()
              if h == "realigned" and sfx and o in truth}  # the other truths: regrets only
    for v, default, metrics in readings:
        pts = task_points(metrics, ref, st.tasks)
        c = compare(pts, truth["adamw"], st.alphas)
        grid.append((v, default, pts, c))
        rows.append((v, c["regret"], list(st.alphas[c["pick"]]),
                     float(np.mean([c["quality"][t]["mae"] for t in st.names])),
                     *[compare(pts, truth[o], st.alphas)["regret"] for o in others.values()]))
    names = ("values", "regret", "pick", "mae", *[f"regret{sfx}" for sfx in others])
    record = {"key": key, "method": TARGET, "seed": st.kinds[TARGET][0],
              **dict(zip(names, map(list, zip(*rows))))}
    return record, grid


def sensitivity(st: Study, ref: Mapping, truth: Mapping) -> tuple[dict, dict]:
    """Every ``previews.sensitivity`` knob's :func:`sweep` of the :data:`TARGET` preview (first
    seed, realigned heads): ``({name: record}, {name: figure rows})``. Nothing is retrained."""
    s0 = st.kinds[TARGET][0]
    records, figure = {}, {}
    for name, key, vals in sensitivity_sweeps(st.profile):
        records[name], figure[name] = sweep(
            st, ref, truth, key,
            [(v, p == st.profile, preview_grid(p, TARGET, s0)["realigned"]) for v, p in vals])
    return records, figure


def sensitivity_table(records: Mapping) -> pd.DataFrame:
    """One row per setting value: regret (against each truth the record has), picked α and MAE."""
    rows = []
    for k, s in records.items():
        for i, v in enumerate(s["values"]):
            row = {"setting": f"{k} = {v}", "regret (points)": s["regret"][i],
                   "picked α": s["pick"][i], "MAE (points)": s["mae"][i]}
            row.update({f"regret vs {TRUTH_NAMES[o]}": s["regret" + sfx][i]
                        for _, (h, o, sfx) in READINGS.items()
                        if h == "realigned" and sfx and "regret" + sfx in s})
            rows.append(row)
    return pd.DataFrame(rows)


def cost_of(st: Study, grids: Mapping, gt_train: float, per_task: Mapping[str, float]) -> dict:
    """Preview grids against the ground-truth grid, in wall seconds: ``gt_train`` (training of the
    weighted runs) plus one reading per α; ``per_task`` (per optimizer, the per-task runs of one
    seed) is added back per kind as often as its posterior reads runs. Results keys."""
    grid_seconds = {m: {k: float(np.mean([grids[m][s]["seconds"][k] for s in ss]))
                        for k in ("merge", "evaluate", "realign")} for m, ss in st.kinds.items()}
    gt_seconds = gt_train + float(np.mean([g["evaluate"] for g in grid_seconds.values()]))
    upfront = {m: per_task[KINDS[m].optimizer] * len(runs(m, st.seeds[0], st.pp))
               for m in st.kinds}
    realigned = {m: g["merge"] + g["realign"] for m, g in grid_seconds.items()}
    original = {m: g["merge"] + g["evaluate"] for m, g in grid_seconds.items()}
    return {"cost_ratio": {m: realigned[m] / gt_seconds for m in st.kinds},
            "cost_ratio_original_heads": {m: original[m] / gt_seconds for m in st.kinds},
            "cost_ratio_with_task_runs": {m: (realigned[m] + upfront[m]) / gt_seconds
                                          for m in st.kinds},
            "cost_seconds": {"ground_truth_grid": gt_seconds, "ground_truth_training": gt_train,
                             "per_task_runs": dict(per_task)},
            "grid_seconds": grid_seconds}


def cost(st: Study, grids: Mapping) -> dict:
    """:func:`cost_of` with the seconds the cached runs recorded (first ground-truth seed, AdamW;
    per-task runs of the first seed)."""
    g0 = st.gt_seeds[0]
    gt_train = sum(weighted_run(st.profile, a, seed=g0, optimizer="adamw").meta["seconds"]
                   for a in st.alphas)
    per_task = {o: sum(finetuned(st.pp, t, seed=st.seeds[0], optimizer=o).meta["seconds"]
                       for t in st.names) for o in OPTIMIZERS}
    return cost_of(st, grids, gt_train, per_task)


def cost_table(st: Study, c: Mapping) -> pd.DataFrame:
    """One row per kind: seconds of each preview grid and its ratio to the ground-truth grid."""
    gt = c["cost_seconds"]["ground_truth_grid"]
    rows = {}
    for m, g in c["grid_seconds"].items():
        rows[st.labels[m]] = {
            "merge only (s)": g["merge"], "original heads (s)": g["merge"] + g["evaluate"],
            "realigned heads (s)": g["merge"] + g["realign"], "ground-truth grid (s)": gt,
            "ratio, realigned": c["cost_ratio"][m],
            "ratio, original heads": c["cost_ratio_original_heads"][m],
            "ratio, realigned incl. per-task runs": c["cost_ratio_with_task_runs"][m]}
    return pd.DataFrame(rows).T


def budget(st: Study) -> dict:
    """What every run and preview of the study was given (results.json ``budget``)."""
    ft, pv = st.pp.finetune, st.pp.previews
    return {"head_steps": ft.head_steps, "steps": ft.steps, "seeds": st.seeds,
            "gt_seeds": st.gt_seeds, "components": pv.components, "sg_estimator": pv.sg_estimator,
            "realign_samples": pv.realign_samples, "realign_steps": pv.realign_steps,
            "truths": list(TRUTHS)}


def live(st: Study, ref: Mapping, truth: Mapping, pred: Mapping, seed: int
         ) -> Callable[..., None]:
    """``show(alpha0, method)``: a preview at α = (alpha0, the rest shared equally) merged on the
    spot and read on 64 test images, with the original heads and realigned ones, drawn over the
    static curves (for a slider). Previewers are built on first use and kept."""
    import matplotlib.pyplot as plt

    from simo.data import make_dataset, subset

    test = make_dataset(st.pp, "test")
    data, built = subset(test, min(64, len(test["image"])), seed), {}
    names = st.names

    def show(alpha0: float = 0.5, method: str = TARGET) -> None:
        alpha = [alpha0] + [(1.0 - alpha0) / (len(names) - 1)] * (len(names) - 1)
        if method not in built:
            built[method] = previewer(st.profile, method, st.kinds[method][0])
        t0 = time.perf_counter()
        r = built[method](alpha, data)
        grid = {t: np.mean([pred["realigned"][method][s][t] for s in st.kinds[method]], axis=0)
                for t in names}
        fig = plots.live_preview(names, st.alphas, truth["adamw"], grid, alpha,
                                 {h: task_points([r[h]], ref, st.tasks) for h in HEADS}, method)
        fig.suptitle(f"{st.labels[method]} at α = {[round(a, 2) for a in alpha]}: "
                     f"{time.perf_counter() - t0:.1f} s", fontsize=9)
        fig.tight_layout()
        plt.show()

    return show
