"""Task relationships as notebook 04 reads them: the ground truth over seeds, the agreement of an
offline transfer matrix with it, geometric pairs against pairs with segmentation, and the closing
facts.

The math of one matrix (λ-sweep curves, the transfer matrix, one seed's pair affinity, Spearman)
is in :mod:`simo.analysis`; this module combines it over seeds and task groups, so the notebook
keeps only calls and plots, and the prose that depends on the numbers is testable here.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from simo import steps
from simo.analysis import Matrix, mean_ci, off_diagonal, pair_affinity, spearman
from simo.config import Profile

GEOMETRIC = ("depth", "normals", "edges")  # functions of the scene's geometry, unlike classes
HEAD_LABELS = {"original": "original heads", "pretrained": "heads on θ0"}
GROUPS = ("geometric pairs", "pairs with segmentation")
# the results.json key of each reading: the paper's (original heads) has the plain name
RESULT_SUFFIX = {"original": "", "pretrained": "_pretrained_heads"}


def geometric(names: Sequence[str]) -> list[str]:
    """The geometric tasks among ``names``, in their order."""
    return [n for n in names if n in GEOMETRIC]


def in_group(group: str, s: str, t: str) -> bool:
    """Whether the ordered pair (s, t) belongs to ``group`` (one of :data:`GROUPS`)."""
    if group == GROUPS[0]:
        return s in GEOMETRIC and t in GEOMETRIC
    if group == GROUPS[1]:
        return "segmentation" in (s, t)
    raise ValueError(f"unknown task group {group!r}: expected one of {list(GROUPS)}")


def pair_affinities(pair_cfg: Profile, pairs: Sequence[tuple[str, str]], tasks: Sequence,
                    seeds: Sequence[int]) -> dict[int, Matrix]:
    """A[s][t] for every seed of the pair trainings, from the cached joint and single runs.

    Both come from ``pair_cfg``: a pair is only compared with its tasks trained alone on the same
    budget, so the affinity measures sharing the encoder, not extra steps.
    """
    names = [t.name for t in tasks]
    out: dict[int, Matrix] = {}
    for s in seeds:
        joint = {p: steps.finetuned(pair_cfg, list(p), seed=s).meta["test"] for p in pairs}
        alone = {t: steps.finetuned(pair_cfg, t, seed=s).meta["test"] for t in names}
        out[s] = pair_affinity(joint, alone, tasks)
    return out


def mean_matrix(per_seed: Mapping[int, Matrix], names: Sequence[str]) -> Matrix:
    """The mean over seeds of every off-diagonal entry; NaN on the diagonal (no pair there)."""
    return {a: {b: float(np.mean([m[a][b] for m in per_seed.values()])) if a != b else np.nan
                for b in names} for a in names}


def rank_agreement(transfer: Matrix, per_seed: Mapping[int, Matrix], names: Sequence[str]
                   ) -> dict[int, float]:
    """Spearman ρ between the off-diagonal entries of an offline matrix and of each seed's
    ground truth: one value per seed, so the agreement gets a confidence interval."""
    return {s: spearman(off_diagonal(transfer, names), off_diagonal(m, names))
            for s, m in per_seed.items()}


def correlation_ci(values: Sequence[float]) -> dict:
    """:func:`simo.analysis.mean_ci` of correlations, its interval clipped to [-1, 1]: a
    t-interval over few seeds can leave that range, a correlation cannot."""
    r = mean_ci(values)
    r["ci95"] = [max(-1.0, r["ci95"][0]), min(1.0, r["ci95"][1])]
    return r


def mean_over(matrix: Matrix, names: Sequence[str], group: str) -> float:
    """The mean of the off-diagonal entries M[s][t] of one group of pairs (NaN entries skipped;
    NaN when the group is empty among ``names``)."""
    vals = [matrix[s][t] for s in names for t in names if s != t and in_group(group, s, t)]
    return float(np.nanmean(vals)) if vals else float("nan")


def group_means(matrices: Mapping[str, Matrix], names: Sequence[str]) -> dict[str, dict[str, float]]:
    """``{column: {group: mean}}`` for every matrix: do geometric tasks share more than pairs with
    segmentation, in each reading and in the ground truth?"""
    return {col: {g: mean_over(m, names, g) for g in GROUPS} for col, m in matrices.items()}


def verdict(ci95: Sequence[float]) -> str:
    """What a rank correlation's 95 % interval says about the offline reading."""
    lo, hi = ci95
    if lo > 0:
        return "agrees with the ground truth"
    if hi < 0:
        return "ranks the pairs against the ground truth"
    return "cannot be told apart from a random ordering (the 95 % CI spans 0)"


def facts(results: Mapping[str, Any], single_steps: tuple[int, int]) -> list[str]:
    """The closing sentences of notebook 04, from its ``results`` (before rounding) and the
    single-task models' budget ``(head_steps, steps)``."""
    names = list(results["tasks"])
    budget = results["pair_budget"]
    rank = {h: results[f"rank_correlation{RESULT_SUFFIX[h]}"] for h in HEAD_LABELS}
    lines = []
    for h, r in rank.items():
        lo, hi = r["ci95"]
        lines.append(f"- Transfer read with {HEAD_LABELS[h]}: Spearman {r['spearman']:+.2f} "
                     f"[{lo:+.2f}, {hi:+.2f}] against joint pair training ({len(budget['seeds'])} "
                     f"seeds, {len(names) * (len(names) - 1)} ordered pairs): the offline reading "
                     f"{verdict(r['ci95'])}.")
    best = max(rank, key=lambda h: rank[h]["spearman"])
    lines.append(f"- The reading that agrees better here uses {HEAD_LABELS[best]} "
                 f"({rank[best]['spearman']:+.2f} vs {min(r['spearman'] for r in rank.values()):+.2f}).")
    for col, means in results["geometric_vs_segmentation"].items():
        g, s = means[GROUPS[0]], means[GROUPS[1]]
        lines.append(f"- {col}: geometric pairs {g:+.3f}, pairs with segmentation {s:+.3f}: "
                     f"geometric tasks {'do' if g > s else 'do not'} transfer more to each other.")
    if "segmentation" in names and len(geometric(names)) >= 2:
        lines.append(_why(results, names))
    lines.append(_extremes(results, names, single_steps))
    return lines


def _why(results: Mapping[str, Any], names: Sequence[str]) -> str:
    """The numbers behind the group means: cosines, the column that every vector lifts, and the
    mean ground-truth affinity."""
    cos, m = results["task_vector_cosine"], results["transfer"]
    lifted = max(names, key=lambda t: np.nanmean([m[s][t] for s in names if s != t]))
    mean_a = np.nanmean(off_diagonal(results["pair_affinity"], names))
    return (f"  Why, in numbers: task-vector cosine {mean_over(cos, names, GROUPS[0]):+.3f} between "
            f"geometric tasks vs {mean_over(cos, names, GROUPS[1]):+.3f} with segmentation; with "
            f"the original heads the column that gains from every vector is {lifted} (its head "
            "reads any finetuned encoder better than θ0 - alignment, not shared knowledge); "
            f"jointly trained pairs mostly compete at this budget (mean A {mean_a:+.1f} %).")


def _extremes(results: Mapping[str, Any], names: Sequence[str], single_steps: tuple[int, int]
              ) -> str:
    """The pair that joint training helps most and hurts most, and the budget it had."""
    aff, budget = results["pair_affinity"], results["pair_budget"]
    ordered = [(s, t) for s in names for t in names if s != t]
    top = max(ordered, key=lambda p: aff[p[0]][p[1]])
    low = min(ordered, key=lambda p: aff[p[0]][p[1]])
    head_steps, steps_ = single_steps
    relative = ("the single-task budget" if budget["steps"] == steps_ else
                f"{'shorter' if budget['steps'] < steps_ else 'longer'} than the "
                f"{head_steps}+{steps_} of the single-task models")
    return (f"- Joint training helps most: {top[1]} trained with {top[0]} "
            f"({aff[top[0]][top[1]]:+.1f} %); hurts most: {low[1]} with {low[0]} "
            f"({aff[low[0]][low[1]]:+.1f} %). Pair runs: {budget['head_steps']}+{budget['steps']} "
            f"steps, {relative}.")

