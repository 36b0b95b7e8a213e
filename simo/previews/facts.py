"""What notebook 05 saw, in sentences computed from its record (:func:`facts`): how the previews
rank against the paper's ordering, what realigning their heads does, where each truth moves with
α, the regret of the best-α choice against every truth, the settings' effect, SGD's lr, the
mixture's components and the cost of a preview against real runs.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from simo.previews.judge import compare, interior
from simo.previews.report import (BEST_FIRST, FLAT, HEADS, READINGS, TARGET, TRUTH_NAMES,
                                  judged_truth, labels, mean_curve, truth_motion)


PAPER = "isotropic worst, then AdamW-SG, IVON-Hess, MultiIVON best"  # BEST_FIRST, in words


def _truth_reading(o: str) -> str:
    """The reading that judges realigned heads against truth ``o``."""
    return next(r for r, (h, t, _) in READINGS.items() if h == "realigned" and t == o)


def _mae_ranking(rec: Mapping, reading: str, label: Mapping[str, str]) -> str:
    h, o, _ = READINGS[reading]
    rows = rec["ordering"][reading]
    ranked = [row["kind"] for row in rows]
    spread = ", ".join(f"{label[row['kind']]} {row['mae_interior']:.2f} [{row['range'][0]:.2f}–"
                       f"{row['range'][1]:.2f}]" for row in rows)
    verdict = ("holds" if ranked == [m for m in BEST_FIRST if m in ranked] else
               f"does not hold (best {label[ranked[0]]}, worst {label[ranked[-1]]})")
    text = (f"Interior MAE with {HEADS[h]}, against {TRUTH_NAMES[o]} finetuning (best first; "
            f"[seed range]): {spread}. The paper's ordering ({PAPER}) {verdict}.")
    overlap = [(a, b) for a, b in zip(rows, rows[1:]) if a["range"][1] >= b["range"][0]]
    if overlap:
        text += ("\n  Neighbours whose seed ranges overlap (not separable with these seeds): "
                 + "; ".join(f"{label[a['kind']]} / {label[b['kind']]}" for a, b in overlap)
                 + ".")
    return text


def _realignment(rec: Mapping, kinds: list[str]) -> str:
    mean = {h: {m: np.mean(rec["mae_interior_seeds"][h][m]) for m in kinds}
            for h in ("original", "realigned")}
    width = {h: max(v.values()) - min(v.values()) for h, v in mean.items()}
    drop = [mean["original"][m] - mean["realigned"][m] for m in kinds]
    return (f"Head realignment {'lowers' if min(drop) > 0 else 'changes'} every preview's interior "
            f"MAE against AdamW (by {min(drop):.1f}–{max(drop):.1f} points) and the gap between "
            f"the best and the worst method goes from {width['original']:.1f} to "
            f"{width['realigned']:.1f} points"
            + (": what the richer posteriors bought with the original heads was mostly features "
               "those heads can still read, and a head refitted to the preview reads any of them "
               "about as well." if width["realigned"] < width["original"] / 2 else "."))


def _motion(rec: Mapping, motion: Mapping) -> str:
    parts = []
    for o, mv in motion.items():
        c = mean_curve(rec["truth"][o])[interior(rec["alphas"])]
        lr = f" (lr {rec['sgd_lr']['lr']:g})" if o == "sgd" and "sgd_lr" in rec else ""
        parts.append(f"{TRUTH_NAMES[o]}{lr} {c.min():.1f}–{c.max():.1f} (range {mv['range']:.1f}, "
                     f"best at α = {mv['best']}): {'flat' if mv['flat'] else 'moves'}")
    moving = [TRUTH_NAMES[o] for o, mv in motion.items() if not mv["flat"]]
    judged = TRUTH_NAMES[judged_truth(motion)]
    return ("Does the truth move with α? Mean task points over the interior α: " + "; ".join(parts)
            + ". A preview is only tested where there is something to preview: "
            + (f"regrets are judged on {judged}." if moving else
               f"every truth is flat (range < {FLAT:g} points), so no regret here tests a "
               f"preview (the regret below is against {judged}, whose range is the largest) and "
               "the interior MAE is the test."))


def _regret(rec: Mapping, alphas: list[tuple], label: Mapping[str, str], motion: Mapping) -> str:
    o = judged_truth(motion)
    truth, inner, kinds = rec["truth"][o], interior(alphas), list(rec["regret"])
    reading = _truth_reading(o)
    sfx = READINGS[reading][2]
    curves = rec["curves"]["realigned"]
    picks = {s: alphas[compare(c, truth, alphas)["pick"]] for s, c in curves[TARGET].items()}
    true_in = mean_curve(truth)[inner]
    prev_in = {m: [mean_curve(c)[inner] for c in curves[m].values()] for m in kinds}
    top = max(c.max() for v in prev_in.values() for c in v)
    r, small = rec["regret" + sfx][TARGET], top < true_in.max()
    by_truth = {t: rec["regret" + READINGS[_truth_reading(t)][2]][TARGET] for t in motion}
    every = ", ".join(f"{TRUTH_NAMES[t]} {x:.2f}" + (" (flat)" if motion[t]["flat"] else "")
                      for t, x in by_truth.items())
    return (f"{label[TARGET]} regret with realigned heads, judged on {TRUTH_NAMES[o]} finetuning: "
            f"{r:.2f} points (target ≤ 2: {'met' if r <= 2 else 'not met'}; per seed "
            + ", ".join(f"{x:.2f}" for x in rec["regret_seeds"][reading][TARGET])
            + f"); against every truth: {every}. The previews' mean points over the interior α "
            "span " + ", ".join(f"{label[m]} {np.mean([c.max() - c.min() for c in prev_in[m]]):.1f}"
                                for m in kinds)
            + f" points, with best values ≤ {top:.1f} ({TRUTH_NAMES[o]}'s best: "
            f"{true_in.max():.1f}). "
            + ("Training the tasks together gains what no merge of separately trained encoders "
               "reproduces, so a preview's best α is decided by small differences ("
               if small else "") + f"{label[TARGET]} picks, per seed: "
            + ", ".join(f"{s}: {a}" for s, a in picks.items()) + (")." if small else "."))


def _settings(rec: Mapping, n_inner: int, label: Mapping[str, str], o: str) -> str:
    sens = rec["sensitivity"]
    first = next(iter(sens.values()))
    key = "regret" + READINGS[_truth_reading(o)][2]
    key = key if all(key in sw for sw in sens.values()) else "regret"
    against = TRUTH_NAMES[o] if key != "regret" else TRUTH_NAMES["adamw"]
    chosen = {tuple(a) for sw in sens.values() for a in sw["pick"]}
    all_r = [r for sw in sens.values() for r in sw[key]]
    return (f"Settings ({label[first['method']]}, seed {first['seed']}, realigned heads, regret "
            f"against {against}): "
            + "; ".join(f"{k}: " + ", ".join(f"{v} → regret {r:.2f}"
                                             for v, r in zip(sw["values"], sw[key]))
                        for k, sw in sens.items())
            + f". Regret spans {min(all_r):.2f}–{max(all_r):.2f} points"
            + (" (a single interior α: nothing to choose)." if n_inner == 1 else
               f" and every setting picks the same α {list(next(iter(chosen)))} (by AdamW's "
               "comparison): the choice is made by the posteriors (what the separately trained "
               "encoders can give when merged), not by these knobs." if len(chosen) == 1 else
               f"; the picked α moves ({sorted(chosen)}), so these settings matter here."))


def _sgd_lr(choice: Mapping) -> str:
    scores = ", ".join(f"{lr:g}: {v:.1f}" for lr, v in zip(choice["lrs"], choice["val_points"]))
    return (f"SGD's learning rate (encoder and heads alike): {choice['lr']:g}, the best mean "
            f"validation points at uniform α ({scores})"
            + (", at the edge of the grid: a wider grid might do better, so the SGD truth may be "
               "under-tuned." if choice["edge"] else ", inside the grid."))


def _mixture_heads(rec: Mapping, label: Mapping[str, str]) -> str:
    parts = []
    seeds = rec["budget"]["seeds"]  # component k is the run of the k-th per-task seed
    for m, per_seed in rec["components"].items():
        per_alpha = next(iter(per_seed.values()))
        counts = {t: np.bincount([c[t] for c in per_alpha]) for t in rec["tasks"]}
        parts.append(f"{label[m]}: " + "; ".join(
            f"{t} " + ", ".join(f"seed {seeds[k]}'s at {n} α" for k, n in enumerate(c) if n)
            for t, c in counts.items()))
    return ("Each task of a mixture is read with the heads of the run whose component EM settled "
            "in (largest responsibility at the previewed θ; α_t = 0: the first seed's): "
            + " | ".join(parts) + ".")


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
    before rounding): whether each truth moves with α, the interior-MAE ranking per reading
    against the paper's, what realignment changes, the corners apart, the regret target on the
    truth that moves most, the settings sweep, SGD's learning rate, the mixture's heads, cost and
    rank correlations. A topic without anything to say is left out."""
    names, alphas, kinds = rec["tasks"], [tuple(a) for a in rec["alphas"]], list(rec["regret"])
    label = labels(rec["budget"]["sg_estimator"], rec["budget"]["components"])
    truth, shapes = rec["truth"]["adamw"], rec["truth_shapes"]["adamw"]
    motion = truth_motion(alphas, rec["truth"])
    corner = {t: truth[t][min(range(len(alphas)), key=lambda i: alphas[i][k])]
              for k, t in enumerate(names)}
    out = {"truth_motion": _motion(rec, motion)}
    out.update({f"mae_{r}": _mae_ranking(rec, r, label) for r in READINGS
                if READINGS[r][1] in rec["truth"]})
    out["realignment"] = _realignment(rec, kinds)
    out["corners"] = (
        "Corners (some α_t = 0) apart, MAE with realigned heads against AdamW: "
        + ", ".join(f"{label[m]} {rec['mae_corners'][m]:.2f}" for m in kinds)
        + " (interior: " + ", ".join(f"{label[m]} {rec['mae_interior'][m]:.2f}" for m in kinds)
        + "). At α_t = 0 the real run trains task t's head only in its head phase, on θ0, and then "
        "reads a drifted encoder (" + ", ".join(f"{t} {corner[t]:.0f} points" for t in names)
        + "), while a realigned preview fits that head with labelled data of t: the corners "
        "differ by construction.")
    out["regret"] = _regret(rec, alphas, label, motion)
    if rec["sensitivity"]:
        out["settings"] = _settings(rec, len(interior(alphas)), label, judged_truth(motion))
    if "sgd_lr" in rec:
        out["sgd_lr"] = _sgd_lr(rec["sgd_lr"])
    if rec.get("components"):
        out["mixture_heads"] = _mixture_heads(rec, label)
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
