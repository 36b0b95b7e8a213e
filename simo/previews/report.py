"""Notebook 05's report: previews judged against real weighted finetuning, and what it says.

The cached steps (:mod:`simo.previews.grids`) give metrics per α; this module turns them into task
points, compares every preview grid (per posterior kind, seed and reading) with the real runs,
averages over seeds, times the two ways of scanning α and writes the closing facts. Posterior
kinds come from :data:`simo.previews.KINDS`, so a new kind needs no change here. Imported by the
notebook only: nothing that keys a cached step imports it.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from simo import jobs, plots
from simo.config import Profile
from simo.previews.grids import (KINDS, preview_grid, previewer, previews_profile, runs,
                                 sensitivity as sensitivity_sweeps, weighted_run)
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
            "vs_ivon": ("realigned", "ivon", "_vs_ivon")}


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


def training_jobs(st: Study) -> list:
    """Every training run, for :func:`simo.jobs.prefetch`: per task and seed an AdamW and an IVON
    run (the posteriors), and real weighted finetuning at every α (the ground truth)."""
    return ([jobs.job(finetuned, st.pp, t, seed=s, optimizer=o, progress=False)
             for o in OPTIMIZERS for s in st.seeds for t in st.names]
            + [jobs.job(weighted_run, st.profile, a, seed=s, optimizer=o, progress=False)
               for o in OPTIMIZERS for s in st.gt_seeds for a in st.alphas])


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
    """``{optimizer: {task: points per α}}`` of real weighted finetuning, ground-truth seed mean."""
    return {o: mean_points(st, ref, [[weighted_run(st.profile, a, seed=s, optimizer=o).meta["test"]
                                      for a in st.alphas] for s in st.gt_seeds])
            for o in OPTIMIZERS}


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
    """Seed means per reading (quality per task, regret, hypervolume gap), the per-seed MAE (mean
    over tasks) and regret: the results keys of the judging, named as in results.json."""
    avg = lambda xs: float(np.mean(xs))  # noqa: E731
    out: dict = {}
    for r, (_, _, suffix) in READINGS.items():
        v = verdicts[r]
        out["quality" + suffix] = {m: {t: {k: avg([x["quality"][t][k] for x in v[m].values()])
                                           for k in ("mae", "mae_interior", "spearman")}
                                       for t in st.names} for m in st.kinds}
        out["regret" + suffix] = {m: avg([x["regret"] for x in v[m].values()]) for m in st.kinds}
        out["hypervolume_gap" + suffix] = {m: avg([x["hypervolume_gap"] for x in v[m].values()])
                                           for m in st.kinds}
    for k in ("mae", "mae_interior"):
        out[f"{k}_seeds"] = {h: {m: [float(np.mean([x["quality"][t][k] for t in st.names]))
                                     for x in verdicts[h][m].values()] for m in st.kinds}
                             for h in ("original", "realigned")}
    out["regret_seeds"] = {r: {m: [x["regret"] for x in verdicts[r][m].values()] for m in st.kinds}
                           for r in verdicts}
    return out


def quality_table(st: Study, summ: Mapping) -> pd.DataFrame:
    """One row per kind and reading (original, realigned heads): MAE and Spearman per task,
    regret and hypervolume gap."""
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
    results record (regret, picked α, MAE per value) and per value ``(value, default, points,
    comparison)`` for the figure."""
    rows, grid = [], []
    for v, default, metrics in readings:
        pts = task_points(metrics, ref, st.tasks)
        c = compare(pts, truth["adamw"], st.alphas)
        grid.append((v, default, pts, c))
        rows.append((v, c["regret"], list(st.alphas[c["pick"]]),
                     float(np.mean([c["quality"][t]["mae"] for t in st.names]))))
    record = {"key": key, "method": TARGET, "seed": st.kinds[TARGET][0],
              **dict(zip(("values", "regret", "pick", "mae"), map(list, zip(*rows))))}
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
    """One row per setting value: regret, picked α and MAE."""
    return pd.DataFrame([{"setting": f"{k} = {v}", "regret (points)": r, "picked α": a,
                          "MAE (points)": e} for k, s in records.items()
                         for v, r, a, e in zip(s["values"], s["regret"], s["pick"], s["mae"])])


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
            "realign_samples": pv.realign_samples, "realign_steps": pv.realign_steps}


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


# ------------------------------------------------------------------ what we saw ---------------

def _mae_ranking(rec: Mapping, h: str, label: Mapping[str, str]) -> str:
    seeds = rec["mae_seeds"][h]
    ranked = sorted(seeds, key=lambda m: np.mean(seeds[m]))
    spread = ", ".join(f"{label[m]} {np.mean(seeds[m]):.2f} [{min(seeds[m]):.2f}–"
                       f"{max(seeds[m]):.2f}]" for m in ranked)
    verdict = ("holds" if ranked == BEST_FIRST else
               f"does not hold (best {label[ranked[0]]}, worst {label[ranked[-1]]})")
    text = (f"MAE with {HEADS[h]} (best first; [seed range]): {spread}. The paper's ordering "
            f"(mixture best, isotropic worst) {verdict}.")
    overlap = [(a, b) for a, b in zip(ranked, ranked[1:]) if max(seeds[a]) >= min(seeds[b])]
    if overlap:
        text += ("\n  Neighbours whose seed ranges overlap (not separable with these seeds): "
                 + "; ".join(f"{label[a]} / {label[b]}" for a, b in overlap) + ".")
    return text


def _realignment(rec: Mapping, kinds: list[str]) -> str:
    mean = {h: {m: np.mean(rec["mae_seeds"][h][m]) for m in kinds}
            for h in ("original", "realigned")}
    width = {h: max(v.values()) - min(v.values()) for h, v in mean.items()}
    drop = [mean["original"][m] - mean["realigned"][m] for m in kinds]
    return (f"Head realignment {'lowers' if min(drop) > 0 else 'changes'} every preview's MAE "
            f"(by {min(drop):.1f}–{max(drop):.1f} points) and the gap between the best and the "
            f"worst method goes from {width['original']:.1f} to {width['realigned']:.1f} points"
            + (": what the richer posteriors bought with the original heads was mostly features "
               "those heads can still read, and a head refitted to the preview reads any of them "
               "about as well." if width["realigned"] < width["original"] / 2 else "."))


def _regret(rec: Mapping, alphas: list[tuple], label: Mapping[str, str]) -> str:
    truth, inner, kinds = rec["truth"]["adamw"], interior(alphas), list(rec["regret"])
    curves = rec["curves"]["realigned"]
    picks = {s: alphas[compare(c, truth, alphas)["pick"]] for s, c in curves[TARGET].items()}
    true_in = mean_curve(truth)[inner]
    prev_in = {m: [mean_curve(c)[inner] for c in curves[m].values()] for m in kinds}
    top = max(c.max() for v in prev_in.values() for c in v)
    r, small = rec["regret"][TARGET], top < true_in.max()
    return (f"{label[TARGET]} regret with realigned heads: {r:.2f} points against AdamW finetuning "
            f"(target ≤ 2: {'met' if r <= 2 else 'not met'}; per seed "
            + ", ".join(f"{x:.2f}" for x in rec["regret_seeds"]["realigned"][TARGET])
            + f"), {rec['regret_vs_ivon'][TARGET]:.2f} against IVON finetuning. Real "
            f"finetuning's mean points over the interior α span {true_in.min():.1f}–"
            f"{true_in.max():.1f} (best at α = {alphas[inner[int(np.argmax(true_in))]]}); the "
            "previews' span "
            + ", ".join(f"{label[m]} {np.mean([c.max() - c.min() for c in prev_in[m]]):.1f}"
                        for m in kinds)
            + f" points, with best values ≤ {top:.1f}. "
            + ("Training the tasks together gains what no merge of separately trained encoders "
               "reproduces, so a preview's best α is decided by small differences ("
               if small else "") + f"{label[TARGET]} picks, per seed: "
            + ", ".join(f"{s}: {a}" for s, a in picks.items()) + (")." if small else "."))


def _settings(rec: Mapping, n_inner: int, label: Mapping[str, str]) -> str:
    sens = rec["sensitivity"]
    first = next(iter(sens.values()))
    chosen = {tuple(a) for sw in sens.values() for a in sw["pick"]}
    all_r = [r for sw in sens.values() for r in sw["regret"]]
    return (f"Settings ({label[first['method']]}, seed {first['seed']}, realigned heads): "
            + "; ".join(f"{k}: " + ", ".join(f"{v} → regret {r:.2f}"
                                             for v, r in zip(sw["values"], sw["regret"]))
                        for k, sw in sens.items())
            + f". Regret spans {min(all_r):.2f}–{max(all_r):.2f} points"
            + (" (a single interior α: nothing to choose)." if n_inner == 1 else
               f" and every setting picks the same α {list(next(iter(chosen)))}: the choice is "
               "made by the posteriors (what the separately trained encoders can give when "
               "merged), not by these knobs." if len(chosen) == 1 else
               f"; the picked α moves ({sorted(chosen)}), so these settings matter here."))


def _cost(rec: Mapping, label: Mapping[str, str]) -> str:
    ratio, orig = rec["cost_ratio"], rec["cost_ratio_original_heads"]
    worst, gt = max(ratio.values()), rec["cost_seconds"]["ground_truth_grid"]
    return (f"Cost: the whole preview grid with realigned heads takes {min(ratio.values()):.3f}–"
            f"{worst:.3f} of the ground-truth grid ({gt:.0f} s; target ≤ 1/20 = 0.05: "
            f"{'met' if worst <= 1 / 20 else 'not met'}), with the original heads "
            f"{min(orig.values()):.3f}–{max(orig.values()):.3f}; the merge itself takes at most "
            f"{max(g['merge'] for g in rec['grid_seconds'].values()):.2f} s per grid. Adding the "
            "up-front per-task runs: " + ", ".join(
                f"{label[m]} {r:.2f}" for m, r in rec["cost_ratio_with_task_runs"].items()) + ".")


def facts(rec: Mapping) -> dict[str, str]:
    """The closing sentences of notebook 05, computed from its results record (results.json
    before rounding): the MAE ranking per reading against the paper's, what realignment changes,
    interior MAE and the corners, the regret target, the settings sweep, cost and rank
    correlations. A topic without anything to say is left out."""
    names, alphas, kinds = rec["tasks"], [tuple(a) for a in rec["alphas"]], list(rec["regret"])
    label = labels(rec["budget"]["sg_estimator"], rec["budget"]["components"])
    truth, shapes = rec["truth"]["adamw"], rec["truth_shapes"]["adamw"]
    corner = {t: truth[t][min(range(len(alphas)), key=lambda i: alphas[i][k])]
              for k, t in enumerate(names)}
    out = {f"mae_{h}": _mae_ranking(rec, h, label) for h in ("original", "realigned")}
    out["realignment"] = _realignment(rec, kinds)
    out["interior"] = (
        "Interior α only (every task weighted), MAE with realigned heads: "
        + ", ".join(f"{label[m]} {np.mean(rec['mae_interior_seeds']['realigned'][m]):.2f}"
                    for m in kinds)
        + ". At α_t = 0 the real run trains task t's head only in its head phase, on θ0, and then "
        "reads a drifted encoder (" + ", ".join(f"{t} {corner[t]:.0f} points" for t in names)
        + "), while a realigned preview fits that head with labelled data of t: the corners "
        "differ by construction.")
    out["regret"] = _regret(rec, alphas, label)
    if rec["sensitivity"]:
        out["settings"] = _settings(rec, len(interior(alphas)), label)
    out["cost"] = _cost(rec, label)
    flat = [f"{t} ({shapes[t]})" for t in names if shapes[t] != "peaked"]
    if flat:
        out["spearman_uninformative"] = (
            f"Spearman over α is uninformative for {', '.join(flat)}: a monotone truth is matched "
            "in rank by any monotone preview, a flat one by none.")
    peaked = [t for t in names if shapes[t] == "peaked"]
    if peaked:
        out["spearman_peaked"] = (
            f"Peaked truth ({', '.join(peaked)}): Spearman with realigned heads " + "; ".join(
                f"{label[m]} " + ", ".join(f"{rec['quality'][m][t]['spearman']:+.2f}"
                                           for t in peaked) for m in kinds) + ".")
    return out
