"""Judging a preview against real weighted finetuning: small pure functions over curves on the
α grid (MAE, regret of the chosen α, Pareto fronts and hypervolume, curve shapes)."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from simo.errors import PreviewError


def _floats(name: str, values: Sequence[float]) -> list[float]:
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError):
        raise PreviewError(f"{name} must be a list of numbers, got {values!r}") from None


def mae(pred: Sequence[float], truth: Sequence[float]) -> float:
    """Mean absolute error between a previewed and a real curve (same α grid, same units)."""
    p, t = _floats("pred", pred), _floats("truth", truth)
    if len(p) != len(t) or not p:
        raise PreviewError(f"mae needs two equally long non-empty curves; got {len(p)} and "
                           f"{len(t)} values")
    return sum(abs(a - b) for a, b in zip(p, t)) / len(p)


def pick(score: Sequence[float], candidates: Sequence[int]) -> int:
    """The α one would choose by ``score``: the highest-scoring of ``candidates`` (indices into the
    α grid); ties go to the smallest index."""
    sc = _floats("score", score)
    cands = list(candidates)
    if not cands:
        raise PreviewError("candidates is empty; pass the indices of the α to choose from")
    for c in cands:
        if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < len(sc):
            raise PreviewError(f"candidate {c!r} is not an index into the {len(sc)} scores")
    best = max(sc[c] for c in cands)
    return min(c for c in cands if sc[c] == best)


def regret(pred_score: Sequence[float], true_score: Sequence[float],
           candidates: Sequence[int]) -> float:
    """Real points lost by trusting the preview: ``max_c true[c] − true[pick(pred, c)]`` over
    ``candidates`` (indices into the α grid)."""
    p, t = _floats("pred_score", pred_score), _floats("true_score", true_score)
    if len(p) != len(t):
        raise PreviewError(f"regret needs equally long score lists; got {len(p)} and {len(t)}")
    cands = list(candidates)
    chosen = pick(p, cands)  # checks the candidates
    return max(t[c] for c in cands) - t[chosen]


def _points(name: str, points: Sequence[Sequence[float]], dim: int | None = None
            ) -> list[tuple[float, ...]]:
    out = [tuple(_floats(name, p)) for p in points]
    dims = {len(p) for p in out} | ({dim} if dim is not None else set())
    if len(dims) > 1 or 0 in dims:
        raise PreviewError(f"{name} must all have the same number (>= 1) of coordinates"
                           + (f" as ref ({dim})" if dim is not None else "")
                           + f"; got lengths {sorted(dims)}")
    if not all(math.isfinite(x) for p in out for x in p):
        raise PreviewError(f"{name} has NaN or inf coordinates; drop those α first")
    return out


def pareto_front(points: Sequence[Sequence[float]]) -> list[tuple[float, ...]]:
    """The non-dominated points (maximisation), without duplicates, sorted ascending."""
    pts = sorted(set(_points("points", points)))
    return [p for p in pts
            if not any(q != p and all(b >= a for a, b in zip(p, q)) for q in pts)]


def hypervolume(points: Sequence[Sequence[float]], ref: Sequence[float]) -> float:
    """Volume dominated by ``points`` and bounded below by ``ref`` (maximisation).

    Coordinates below ``ref`` are clipped to it, so a point that does not strictly dominate
    ``ref`` adds only its part above ref (often nothing). Exact in any dimension by slicing along
    the last coordinate (HSO); O(n^d), fine for the < 100 points of an α grid.
    """
    r = tuple(_floats("ref", ref))
    pts = _points("points", points, len(r))
    if not all(math.isfinite(x) for x in r):
        raise PreviewError(f"ref {list(r)} has NaN or inf coordinates")
    clipped = [tuple(max(x, lo) for x, lo in zip(p, r)) for p in pts]
    return _hso(pareto_front(clipped) if clipped else [], r)


def _hso(points: list[tuple[float, ...]], ref: tuple[float, ...]) -> float:
    if not points:
        return 0.0
    if len(ref) == 1:
        return max(p[0] for p in points) - ref[0]
    levels = sorted({p[-1] for p in points}, reverse=True) + [ref[-1]]
    volume = 0.0
    for top, bottom in zip(levels, levels[1:]):
        if top > bottom:
            volume += (top - bottom) * _hso([p[:-1] for p in points if p[-1] >= top], ref[:-1])
    return volume


def hypervolume_gap(pred_points: Sequence[Sequence[float]], true_points: Sequence[Sequence[float]],
                    ref: Sequence[float]) -> float:
    """``(HV(true) − HV(pred)) / HV(true)``: the share of the real front's hypervolume the preview
    misses; negative when the preview promises more than real finetuning delivers."""
    true_hv = hypervolume(true_points, ref)
    if true_hv == 0.0:
        raise PreviewError(f"the true points have zero hypervolume above ref {list(ref)}; "
                           "choose a ref below the real front in every coordinate")
    return (true_hv - hypervolume(pred_points, ref)) / true_hv


# ------------------------------------------------------------------ curves on the α grid ---------

def task_points(metrics: Sequence[Mapping[str, Mapping[str, float]]],
                reference: Mapping[str, Mapping[str, float]], tasks: Sequence) -> dict[str, list]:
    """Per task, its normalized performance in points (100 = ``reference``) at every α.

    ``metrics[i]`` are the metrics read at the i-th α; ``tasks`` are :class:`simo.tasks.Task`.
    Normalized points put tasks with different metrics (mIoU, depth error) on one scale, so one
    MAE, regret and front compares them.
    """
    from simo.tasks import normalized_performance

    per_alpha = [normalized_performance(m, reference, tasks) for m in metrics]
    return {t.name: [100.0 * p[t.name] for p in per_alpha] for t in tasks}


def interior(alphas: Sequence[Sequence[float]]) -> list[int]:
    """Indices of the α that weigh every task (> 0): the candidates of a best-α choice, since at
    a corner a task is not trained at all and 'best' would just mean 'best single task'."""
    out = [i for i, a in enumerate(alphas) if all(x > 0 for x in a)]
    if not out:
        n_tasks = len(alphas[0]) if len(alphas) else 2
        raise PreviewError("the α grid has no interior point (every α zeroes a task); use "
                           f"previews.n_alpha >= {n_tasks + 1} for {n_tasks} tasks")
    return out


def corners(alphas: Sequence[Sequence[float]]) -> list[int]:
    """Indices of the α that zero some task (the complement of :func:`interior`): there the real
    run leaves that task's head as its head phase made it, while a realigned preview refits it,
    so the two differ by construction and are judged apart."""
    inner = set(interior(alphas))
    return [i for i in range(len(alphas)) if i not in inner]


def shape(curve: Sequence[float], flat: float = 1.0, wiggle: float = 0.1) -> str:
    """``"flat"`` (range < ``flat`` points), ``"monotone"`` or ``"peaked"``.

    Steps smaller than ``wiggle`` × the range are noise (a single-seed curve on a plateau wiggles)
    and do not make a curve peaked. Spearman over α only says something about a peaked curve: a
    monotone truth is matched in rank by any monotone preview.
    """
    c = [x for x in _floats("curve", curve) if math.isfinite(x)]
    if len(c) < 2 or max(c) - min(c) < flat:
        return "flat"
    tol = wiggle * (max(c) - min(c))
    signs = {s > 0 for s in (b - a for a, b in zip(c, c[1:])) if abs(s) > tol}
    return "monotone" if len(signs) <= 1 else "peaked"


def compare(pred: Mapping[str, Sequence[float]], truth: Mapping[str, Sequence[float]],
            alphas: Sequence[Sequence[float]], ref: Sequence[float] | None = None) -> dict:
    """How well a previewed grid of task points matches the real one.

    Returns ``{"quality": {task: {"mae", "mae_interior", "mae_corners", "spearman"}}, "regret",
    "pick", "hypervolume_gap", "ref"}`` (``mae_interior``: over :func:`interior` α only,
    ``mae_corners`` over the others, NaN if there are none);
    regret scores an α by the mean of its task points and picks among :func:`interior` α
    (``pick``: the index of the preview's choice);
    the hypervolume reference defaults to the true grid's worst point per task minus 1 (so every
    real α counts); the gap is NaN when the true front has no volume above ``ref``.
    """
    from simo.analysis import spearman

    names = list(truth)
    if set(pred) != set(names):
        raise PreviewError(f"preview tasks {sorted(pred)} differ from ground-truth tasks "
                           f"{sorted(names)}")
    inner, edge = interior(alphas), corners(alphas)
    sub = lambda c, idx: [c[i] for i in idx]  # noqa: E731
    quality = {t: {"mae": mae(pred[t], truth[t]), "spearman": spearman(pred[t], truth[t]),
                   "mae_interior": mae(sub(pred[t], inner), sub(truth[t], inner)),
                   "mae_corners": mae(sub(pred[t], edge), sub(truth[t], edge)) if edge
                   else float("nan")}
               for t in names}
    mean_of = lambda pts: [sum(pts[t][i] for t in names) / len(names)  # noqa: E731
                           for i in range(len(alphas))]
    if ref is None:
        ref = [min(truth[t]) - 1.0 for t in names]
    pred_pts = [[pred[t][i] for t in names] for i in range(len(alphas))]
    true_pts = [[truth[t][i] for t in names] for i in range(len(alphas))]
    try:
        gap = hypervolume_gap(pred_pts, true_pts, ref)
    except PreviewError:
        gap = float("nan")
    pred_mean = mean_of(pred)
    return {"quality": quality, "regret": regret(pred_mean, mean_of(truth), inner),
            "pick": pick(pred_mean, inner), "hypervolume_gap": gap, "ref": list(ref)}
