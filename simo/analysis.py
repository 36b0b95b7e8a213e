"""Reading results: training curves and plateau checks, λ selection on validation, confidence
intervals, misalignment diagnostics (CKA, learned per-block coefficients) and task relationships
(task-vector sweeps, transfer matrices, pair affinities, their rank agreement).

Functions here take metrics, models and tensors and return numbers; caching is the pipeline's job.
"""
from __future__ import annotations

import math
from typing import Callable, Generator, Mapping, Sequence

import torch
from torch import Tensor

from simo.tasks import Task


def curve(history: Sequence[dict], task: str, metric: str) -> tuple[list[int], list[float]]:
    """(steps, values) of a validation metric recorded by the training loop."""
    pts = [(h["step"], h["val"][task][metric]) for h in history if "val" in h and task in h["val"]]
    return [p[0] for p in pts], [p[1] for p in pts]


def plateau_gain(history: Sequence[dict], task: Task, tail: float = 0.25) -> float:
    """Relative improvement of the main validation metric over the last ``tail`` of training.

    Near 0 means the run has reached its plateau: training longer with this schedule would not
    change the reference numbers that every Δ_MTL is measured against.
    """
    steps, values = curve(history, task.name, task.main_metric)
    if len(values) < 2:
        return float("nan")
    cut = steps[-1] * (1.0 - tail)
    before = [v for s, v in zip(steps, values) if s <= cut][-1]
    end = values[-1]
    gain = (end - before) if higher_is_better(task) else (before - end)
    return gain / max(abs(end), 1e-12)


def higher_is_better(task: Task, metric: str | None = None) -> bool:
    """The direction of ``metric`` (default: the task's main metric)."""
    metric = metric or task.main_metric
    return dict((m.name, m.higher_is_better) for m in task.metrics)[metric]


def better(task: Task, a: float, b: float, metric: str | None = None) -> bool:
    """Is value ``a`` better than ``b`` on ``metric`` (default: the task's main metric)?"""
    return a > b if higher_is_better(task, metric) else a < b


def mean_saturation(images: Tensor) -> float:
    """Mean HSV saturation of (N,3,H,W) images: how colourful a scene distribution is."""
    mx, mn = images.max(dim=1).values, images.min(dim=1).values
    return float(((mx - mn) / mx.clamp_min(1e-6)).mean())


def label_statistics(data: dict[str, Tensor], classes: Sequence[str]) -> dict:
    """Class pixel frequencies, depth range and the density of sparse targets of a dataset."""
    lab = data["label"]
    valid = lab >= 0
    counts = torch.bincount(lab[valid].ravel(), minlength=len(classes)).double()
    depth = data["depth"][data["depth"] > 0]
    out = {
        "class_frequency": {c: float(n / counts.sum()) for c, n in zip(classes, counts)},
        "depth": {"min": float(depth.min()), "median": float(depth.median()),
                  "max": float(depth.max())},
        "invalid_label_fraction": float(1 - valid.float().mean()),
    }
    if "edge" in data:
        out["edge_fraction"] = float(data["edge"].mean())
    if "keypoint" in data:
        out["keypoint_fraction"] = float((data["keypoint"] > 0.5).float().mean())
    return out


def dataset_facts(results: Mapping) -> list[str]:
    """Notebook 00's closing lines, from its results: split size, the commonest and rarest class,
    the depth range, how sparse the edges are, and the saturation shift that θ0 must bridge."""
    freq, depth, sat = results["class_frequency"], results["depth"], results["saturation"]
    rare, common = min(freq, key=freq.get), max(freq, key=freq.get)
    size = results["image_size"]
    lines = [f"- {results['splits']['train']} training scenes of {size}x{size} px; the most common "
             f"class is {common} ({freq[common]:.0%} of pixels), the rarest {rare} "
             f"({freq[rare]:.1%}).",
             f"- Depth ranges from {depth['min']:.2f} to {depth['max']:.2f} "
             f"(median {depth['median']:.2f})."]
    if "edge_fraction" in results:
        lines.append(f"- Occlusion edges cover {results['edge_fraction']:.1%} of pixels: a sparse "
                     "target.")
    lines.append(f"- Pretraining scenes are {'less' if sat['pretrain'] < sat['task'] else 'more'} "
                 f"saturated ({sat['pretrain']:.2f}) than task scenes ({sat['task']:.2f}): the "
                 "encoder must transfer across a shift.")
    return lines


# ------------------------------------------------------------------ misalignment diagnostics -------

@torch.no_grad()
def block_tokens(vit: torch.nn.Module, images: Tensor, batch_size: int = 128) -> list[Tensor]:
    """Patch-token features after every block (no final norm): a list of (N*tokens, C) tensors."""
    vit.eval()
    per_block: list[list[Tensor]] = []
    device = next(vit.parameters()).device
    for i in range(0, len(images), batch_size):
        inter = vit.forward_intermediates(images[i:i + batch_size].to(device), indices=len(vit.blocks),
                                          norm=False, output_fmt="NLC", intermediates_only=True)
        for j, f in enumerate(inter):
            if len(per_block) <= j:
                per_block.append([])
            per_block[j].append(f.reshape(-1, f.shape[-1]))
    return [torch.cat(b).double() for b in per_block]


def linear_cka(x: Tensor, y: Tensor) -> float:
    """Linear CKA (Kornblith et al. 2019) between two (n, d) feature matrices; 1 = same up to
    rotation and isotropic scaling, which is exactly what a fixed linear head cannot undo."""
    x = x - x.mean(0, keepdim=True)
    y = y - y.mean(0, keepdim=True)
    hsic = (y.T @ x).norm() ** 2
    return float(hsic / ((x.T @ x).norm() * (y.T @ y).norm()).clamp_min(1e-12))


def mean_cosine(x: Tensor, y: Tensor) -> float:
    """Mean cosine similarity of corresponding token features: sensitive to any change a head
    would see, including those CKA forgives (rotations, scaling)."""
    return float(torch.nn.functional.cosine_similarity(x, y, dim=1).mean())


def block_similarity(vit_a: torch.nn.Module, vit_b: torch.nn.Module,
                     images: Tensor) -> dict[str, list[float]]:
    """Per-block linear CKA and cosine similarity of two encoders' features on the same images."""
    fa, fb = block_tokens(vit_a, images), block_tokens(vit_b, images)
    return {"cka": [linear_cka(a, b) for a, b in zip(fa, fb)],
            "cosine": [mean_cosine(a, b) for a, b in zip(fa, fb)]}


def first_round(grid: Sequence[float], stride: int = 1) -> list[float]:
    """The values :func:`select_on_validation` scores first: every ``stride``-th and the last."""
    values = [float(v) for v in grid]
    return [values[i] for i in sorted(set(range(0, len(values), stride)) | {len(values) - 1})]


def search(grid: Sequence[float], stride: int = 1, bounds: tuple[float, float] | None = None
           ) -> Generator[list[float], dict[float, float], tuple[float, dict[float, float]]]:
    """The paper's λ protocol as a generator: yields the grid values to score next, is sent their
    validation scores (higher = better), and returns the best value and every score it saw.

    Ties go to the smaller value (the smaller edit of the pretrained model). With ``stride`` k > 1
    (for expensive scores, e.g. a realignment per value) only every k-th value and the last are
    scored first (:func:`first_round`), then the neighbours of the current best until both of its
    neighbours are scored: a coarse-to-fine search that finds the grid's best value whenever the
    curve is unimodal. ``bounds`` (lo, hi) lets the grid grow: while the best value sits on an
    edge of the grid, one more value at the edge's spacing is added beyond it, until the best is
    interior or the bound is reached (a choice at the grid's edge says the grid was too narrow).
    As a generator, many searches can advance in lockstep, each round's values of all of them
    computed side by side (:func:`simo.protocol.run_searches`).
    """
    values = [float(v) for v in grid]
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    lo, hi = bounds if bounds is not None else (values[0], values[-1])
    scores: dict[float, float] = {}

    def best_index() -> int:
        return max((i for i, v in enumerate(values) if v in scores),
                   key=lambda i: (scores[values[i]], -values[i]))

    def widen(b: int) -> int:
        """Add a value beyond the best if it is on an edge and the bounds allow; new index of b."""
        if len(values) > 1 and b == len(values) - 1:
            v = round(2 * values[-1] - values[-2], 10)
            if v <= hi + 1e-12:
                values.append(v)
        elif len(values) > 1 and b == 0:
            v = round(2 * values[0] - values[1], 10)
            if v >= lo - 1e-12:
                values.insert(0, v)
                return b + 1
        return b

    todo = [values.index(v) for v in first_round(values, stride)]
    while todo:
        got = yield [values[i] for i in todo]
        scores.update({float(v): float(x) for v, x in got.items()})
        b = widen(best_index())
        todo = [i for i in (b - 1, b + 1) if 0 <= i < len(values) and values[i] not in scores]
    return values[best_index()], {v: scores[v] for v in values if v in scores}


def is_interior(value: float, scores: Mapping[float, float]) -> bool:
    """Is ``value`` strictly inside the values a search scored (not on the edge it searched)?"""
    return min(scores) < value < max(scores)


def select_on_validation(score: Callable[[float], float], grid: Sequence[float], stride: int = 1,
                         prefetch: Callable[[list[float]], object] | None = None
                         ) -> tuple[float, dict[float, float]]:
    """Run one :func:`search` with ``score``; ``prefetch(values)``, if given, is called with each
    round's values before they are scored (e.g. computing them side by side with
    :func:`simo.jobs.prefetch`). Returns the best value and the scores of the values evaluated."""
    gen = search(grid, stride)
    try:
        values = next(gen)
        while True:
            if prefetch is not None:
                prefetch(values)
            values = gen.send({v: score(v) for v in values})
    except StopIteration as done:
        return done.value


def learn_layer_coefficients(model: torch.nn.Module, tasks: Sequence, pretrained: dict[str, Tensor],
                             task_vectors: Sequence[dict[str, Tensor]], data: dict[str, Tensor], *,
                             init: float, steps: int, lr: float = 1e-2, batch_size: int = 32,
                             seed: int = 0) -> Tensor:
    """AdaMerging-style diagnostic (Yang et al. 2024): learn one coefficient per (task vector, block).

    θ_k = θ0_k + Σ_t λ[t, l(k)] τ_t,k, with l(k) the layer of parameter k (``merging.layer_index``),
    trained with the multi-task loss through the *original* heads on a small labelled set. Where the
    learned λ departs from the uniform ``init`` tells which blocks the heads need closer to which
    task's finetuned weights. Returns λ as a (tasks, layers) tensor.
    """
    from simo.merging import layer_index
    from simo.train import sample_batch, step_generator, to_device

    vit = model.encoder.vit
    device = next(vit.parameters()).device  # the coefficients train where the model lives
    pretrained = {k: v.to(device) for k, v in pretrained.items()}
    task_vectors = [{k: v.to(device) for k, v in tv.items()} for tv in task_vectors]
    n_layers = len(vit.blocks)
    keys = [k for k, v in pretrained.items() if v.is_floating_point()]
    layer = {k: layer_index(k, n_layers) for k in keys}
    lam = torch.full((len(task_vectors), n_layers), float(init), device=device, requires_grad=True)
    opt = torch.optim.Adam([lam], lr=lr)
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    size = tuple(data["image"].shape[-2:])
    for s in range(steps):
        batch = to_device(sample_batch(data, batch_size, step_generator(seed, s), flip=False)[0],
                          device)
        params = {k: pretrained[k] + sum(lam[t, layer[k]] * tv[k]
                                         for t, tv in enumerate(task_vectors)) for k in keys}
        params.update({k: v for k, v in pretrained.items() if k not in params})
        feats, cls = _merged_features(model.encoder, vit, params, batch["image"])
        loss = sum(t.loss(model.heads[t.name](feats, cls, size), batch[t.target]) for t in tasks)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for p, f in zip(model.parameters(), flags):
        p.requires_grad_(f)
    return lam.detach().cpu()


def _merged_features(encoder: torch.nn.Module, vit: torch.nn.Module, params: dict[str, Tensor],
                     images: Tensor) -> tuple[list[Tensor], list[Tensor | None]]:
    from torch.func import functional_call

    return functional_call(encoder, {f"vit.{k}": v for k, v in params.items()}, (images,),
                           strict=False)


# two-sided 95 % quantiles of Student's t by degrees of freedom (scipy is not a dependency)
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
         9: 2.262, 10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}


def mean_ci(values: Sequence[float]) -> dict:
    """Mean and 95 % confidence interval over seeds (Student's t), plus the per-seed values.

    One seed gives a zero-width interval: it is reported, never hidden, and says "one seed".
    """
    x = [float(v) for v in values]
    if not x:
        raise ValueError("mean_ci needs at least one value")
    n = len(x)
    mean = sum(x) / n
    if n == 1:
        return {"mean": mean, "ci95": [mean, mean], "seeds": x}
    sd = math.sqrt(sum((v - mean) ** 2 for v in x) / (n - 1))
    df = n - 1
    t = _T975[max(k for k in _T975 if k <= df)] if df <= 30 else 1.96
    half = t * sd / math.sqrt(n)
    return {"mean": mean, "ci95": [mean - half, mean + half], "seeds": x}


def samples_seen(n: int, batch_size: int, seed: int, steps: int) -> list[int]:
    """Distinct training samples a run has seen after each step, replaying its minibatch draws.

    The training loop draws step ``s``'s batch from ``step_generator(seed, s)``, so the count can
    be recomputed after the fact for any step of any cached run.
    """
    from simo.train import sample_batch, step_generator

    index = {"i": torch.arange(n)}
    seen = torch.zeros(n, dtype=torch.bool)
    out = []
    for s in range(steps):
        seen[sample_batch(index, batch_size, step_generator(seed, s), flip=False)[1]] = True
        out.append(int(seen.sum()))
    return out


# ------------------------------------------------------------------ task relationships -------------

Matrix = dict[str, dict[str, float]]  # M[s][t]: row = source task s, column = evaluated task t


def sweep_curves(sweeps: Mapping[str, Mapping[float, Mapping[str, Mapping[str, float]]]],
                 single: Mapping[str, Mapping[str, float]], tasks: Sequence
                 ) -> dict[str, dict[str, dict[float, float]]]:
    """Normalized performance n_t(λ) of every task t on θ0 + λ τ_s (1 = the single-task model).

    ``sweeps[s][λ]`` holds the metrics of every task on that encoder. Returns ``[s][t][λ]``.
    """
    from simo.tasks import normalized_performance

    out: dict[str, dict[str, dict[float, float]]] = {}
    for s, curve in sweeps.items():
        n = {lam: normalized_performance(m, single, tasks) for lam, m in sorted(curve.items())}
        out[s] = {t.name: {lam: v[t.name] for lam, v in n.items()} for t in tasks}
    return out


def transfer_matrix(curves: Mapping[str, Mapping[str, Mapping[float, float]]]) -> Matrix:
    """M[s][t] = max_λ (n_t(λ) − n_t(0)) / (1 − n_t(0)): the best normalized improvement of task t
    from adding τ_s to the pretrained encoder (0: no better than θ0; 1: as good as the single-task
    model; < 0: τ_s only hurts t). NaN where θ0 already matches the single-task model (no room).
    ``curves`` as returned by :func:`sweep_curves`; λ = 0 must be on the grid.
    """
    out: Matrix = {}
    for s, per_task in curves.items():
        out[s] = {}
        for t, curve in per_task.items():
            if 0.0 not in curve:
                raise ValueError("the λ grid of a task-vector sweep must contain 0 (the pretrained "
                                 "encoder), the reference of the normalized improvement")
            room = 1.0 - curve[0.0]
            out[s][t] = ((max(curve.values()) - curve[0.0]) / room if room > 1e-6
                         else float("nan"))
    return out


def pair_affinity(joint: Mapping[tuple[str, str], Mapping[str, Mapping[str, float]]],
                  alone: Mapping[str, Mapping[str, Mapping[str, float]]], tasks: Sequence
                  ) -> Matrix:
    """A[s][t] = 100·(n_t(s and t trained jointly) − 1), n against t trained alone with the same
    budget: how many percent training alongside s helps (> 0) or hurts (< 0) task t.

    ``joint[(a, b)]``: metrics of the jointly trained pair (either order); ``alone[t]``: metrics
    of the single-task run (``alone[t][t]`` is read).
    """
    from simo.tasks import normalized_performance

    by_name = {t.name: t for t in tasks}
    out: Matrix = {s: {} for s in by_name}
    for (a, b), metrics in joint.items():
        for s, t in ((a, b), (b, a)):
            n = normalized_performance(metrics, {t: alone[t][t]}, [by_name[t]])[t]
            out[s][t] = 100.0 * (n - 1.0)
    return out


def off_diagonal(matrix: Matrix, names: Sequence[str]) -> list[float]:
    """The entries M[s][t], s ≠ t, in a fixed order (rows, then columns, as in ``names``)."""
    return [matrix[s][t] for s in names for t in names if s != t]


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties); pairs with a NaN are dropped."""
    import pandas as pd

    keep = [(a, b) for a, b in zip(x, y) if not (math.isnan(a) or math.isnan(b))]
    if len(keep) < 3:
        return float("nan")
    rx = pd.Series([a for a, _ in keep]).rank()
    ry = pd.Series([b for _, b in keep]).rank()
    return float(rx.corr(ry))


def task_vector_cosines(task_vectors: Sequence[Mapping[str, Tensor]], names: Sequence[str]
                        ) -> tuple[Matrix, dict[str, Matrix]]:
    """Cosine similarity of every pair of task vectors: over the whole encoder, and per group of
    parameters (``block 0`` … ``block L-1``; everything outside the blocks is ``other``)."""
    def group(key: str) -> str:
        parts = key.split(".")
        return f"block {parts[1]}" if parts[0] == "blocks" and parts[1].isdigit() else "other"

    groups = sorted({group(k) for k in task_vectors[0]},
                    key=lambda g: (g == "other", int(g.split()[1]) if g != "other" else 0))

    def flat(tv: Mapping[str, Tensor], g: str | None) -> Tensor:
        return torch.cat([v.flatten().double() for k, v in sorted(tv.items())
                          if g is None or group(k) == g])

    def matrix(g: str | None) -> Matrix:
        vs = [flat(tv, g) for tv in task_vectors]
        return {a: {b: float(torch.nn.functional.cosine_similarity(va, vb, dim=0))
                    for b, vb in zip(names, vs)} for a, va in zip(names, vs)}

    return matrix(None), {g: matrix(g) for g in groups}
