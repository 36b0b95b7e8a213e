"""Dense prediction tasks: losses, dataset-level metrics and the multi-task Δ summaries.

Every task is one frozen :class:`Task` object so that training, merging and evaluation code can
treat tasks uniformly (``task.loss``, ``task.update`` ...) and so that metric definitions live in
exactly one place. Conventions follow MTAN / LibMTL so numbers are comparable with the literature.

Batch layout (see the package README): ``image`` (B,3,H,W) in [0,1]; ``label`` (B,H,W) int64 with
-1 = ignore; ``depth`` (B,1,H,W), 0 = invalid; ``normal`` (B,3,H,W) unit vectors, zero = invalid;
``edge`` (B,1,H,W) in {0,1}; ``keypoint`` (B,1,H,W) heatmap in [0,1]. Heads output raw
full-resolution predictions (B,C,H,W).

Metric accumulation: ``update`` adds per-batch sums / confusion counts (float64 / int64 on the CPU)
so that ``compute`` returns the dataset-level value, identical to one evaluation over the
concatenated dataset, independent of batching. A task that saw no valid pixel reports NaN for
its metrics (there is nothing to measure; NaN shows up as a gap instead of a fake number).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from simo.errors import TaskError, one_of

__all__ = [
    "DEFAULT_NUM_CLASSES",
    "DELTA_CONVENTIONS",
    "EDGE_POS_WEIGHT",
    "EPS",
    "TASK_NAMES",
    "Metric",
    "Task",
    "delta_label",
    "delta_mtl",
    "evaluate",
    "get_task",
    "get_tasks",
    "normalized_performance",
]

TASK_NAMES: tuple[str, ...] = (
    "segmentation", "depth", "normals", "edges", "keypoints", "autoencoder", "disparity", "parts",
)
DEFAULT_NUM_CLASSES = 6
# Cityscapes part segmentation (the SIMO code's mapping): background + 9 human/vehicle parts.
PART_CLASSES = 10
# Edge pixels are ~5-10 % of an image; weighting positives by a fixed 4 keeps the head from
# collapsing to "no edge everywhere" without the batch-dependent weights of HED-style losses
# (a constant keeps the loss a fixed function of the prediction, which merging analyses need).
EDGE_POS_WEIGHT = 4.0
# Guards divisions by a zero reference metric in the Δ summaries (a reference of exactly 0 for a
# lower-is-better metric would otherwise divide by zero); small enough to never touch real values.
EPS = 1e-12
# Thresholds (degrees) of the "within t°" normal metrics, as in MTAN / LibMTL.
NORMAL_THRESHOLDS: tuple[float, ...] = (11.25, 22.5, 30.0)
DELTA_CONVENTIONS: tuple[str, ...] = ("normalized", "relative")
_DELTA_LABELS = {
    "normalized": "Δ_MTL (normalized perf., %)",
    "relative": "Δm (relative change, %)",
}


@dataclass(frozen=True)
class Metric:
    """A named metric and its direction (needed to orient every Δ summary)."""

    name: str
    higher_is_better: bool


@dataclass(frozen=True)
class Task:
    """One dense prediction task; subclasses define loss, metrics and display prediction."""

    name: str
    target: str
    channels: int
    metrics: tuple[Metric, ...]
    main_metric: str

    def __post_init__(self) -> None:
        names = [m.name for m in self.metrics]
        if self.main_metric not in names:
            raise TaskError(one_of(self.main_metric, names, f"main metric for task {self.name!r}"))

    @property
    def metric_names(self) -> tuple[str, ...]:
        """Metric names in declaration order (the keys of :meth:`compute`)."""
        return tuple(m.name for m in self.metrics)

    def loss(self, pred: Tensor, batch_target: Tensor) -> Tensor:
        """Scalar training loss averaged over valid pixels; 0 (with a graph) if none are valid."""
        raise NotImplementedError

    def new_state(self) -> dict:
        """Fresh metric accumulator for one evaluation pass."""
        raise NotImplementedError

    def update(self, state: dict, pred: Tensor, target: Tensor) -> None:
        """Accumulate one batch into ``state`` (no gradients are tracked)."""
        raise NotImplementedError

    def compute(self, state: dict) -> dict[str, float]:
        """Dataset-level metrics from the accumulated state, keyed by metric name."""
        raise NotImplementedError

    def predict(self, pred: Tensor) -> Tensor:
        """Turn raw head output into something displayable (class map, unit normals, ...)."""
        return pred

    # -- helpers -----------------------------------------------------------------------------

    def _check(self, pred: Tensor, target: Tensor, target_channels: int | None) -> None:
        """Fail with one line on shape mismatches, which otherwise broadcast silently."""
        if pred.dim() != 4 or pred.shape[1] != self.channels:
            raise TaskError(
                f"task {self.name!r}: prediction must have shape (B,{self.channels},H,W), "
                f"got {tuple(pred.shape)}"
            )
        if target_channels is None:
            ok = target.dim() == 3 and target.shape == (pred.shape[0], *pred.shape[2:])
            want = "(B,H,W)"
        else:
            ok = target.dim() == 4 and target.shape == (
                pred.shape[0], target_channels, *pred.shape[2:])
            want = f"(B,{target_channels},H,W)"
        if not ok:
            raise TaskError(
                f"task {self.name!r}: target {self.target!r} must have shape {want} matching "
                f"prediction {tuple(pred.shape)}, got {tuple(target.shape)}"
            )


def _masked_mean(values: Tensor, valid: Tensor) -> Tensor:
    """Mean over valid entries without a host sync; exactly 0 (still differentiable) if none.

    ``torch.where`` (not multiplication by the mask) keeps NaN/inf at invalid pixels out of both
    the value and the gradient.
    """
    total = torch.where(valid, values, torch.zeros_like(values)).sum()
    return total / valid.sum().clamp_min(1).to(total.dtype)


def _nan_metrics(task: Task) -> dict[str, float]:
    return {name: math.nan for name in task.metric_names}


# ---------------------------------------------------------------------------------------------
# segmentation


@dataclass(frozen=True)
class SegmentationTask(Task):
    """Semantic segmentation: cross-entropy, mIoU and pixel accuracy from a confusion matrix."""

    @property
    def num_classes(self) -> int:
        return self.channels

    def loss(self, pred: Tensor, batch_target: Tensor) -> Tensor:
        self._check(pred, batch_target, None)
        # reduction="sum" / count instead of "mean": the mean is 0/0 = NaN when all are ignored.
        total = F.cross_entropy(pred.float(), batch_target, ignore_index=-1, reduction="sum")
        count = (batch_target != -1).sum().clamp_min(1)
        return total / count

    def new_state(self) -> dict:
        return {"confusion": torch.zeros(self.channels, self.channels, dtype=torch.int64)}

    @torch.no_grad()
    def update(self, state: dict, pred: Tensor, target: Tensor) -> None:
        self._check(pred, target, None)
        c = self.channels
        valid = target != -1
        t = target[valid]
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= c):
            raise TaskError(
                f"task {self.name!r}: labels must be -1 (ignore) or in [0, {c - 1}], "
                f"got range [{int(t.min())}, {int(t.max())}]; check num_classes"
            )
        p = pred.argmax(dim=1)[valid]
        counts = torch.bincount(t * c + p, minlength=c * c).reshape(c, c)
        state["confusion"] += counts.cpu()  # rows: target class, columns: predicted class

    def compute(self, state: dict) -> dict[str, float]:
        """mIoU averages only classes with union > 0 (present in targets or predictions).

        Classes that never occur and are never predicted have an undefined IoU (0/0); counting
        them as 0 or 1 would make mIoU depend on which classes a split happens to contain.
        """
        conf = state["confusion"].double()
        total = conf.sum()
        if total == 0:
            return _nan_metrics(self)
        tp = conf.diag()
        union = conf.sum(0) + conf.sum(1) - tp
        present = union > 0
        miou = (tp[present] / union[present]).mean()
        return {"miou": float(miou), "pixel_acc": float(tp.sum() / total)}

    def predict(self, pred: Tensor) -> Tensor:
        return pred.argmax(dim=1)


# ---------------------------------------------------------------------------------------------
# depth


@dataclass(frozen=True)
class DepthTask(Task):
    """Depth regression: L1 on valid (target > 0) pixels; absolute and relative error."""

    def loss(self, pred: Tensor, batch_target: Tensor) -> Tensor:
        self._check(pred, batch_target, 1)
        return _masked_mean((pred.float() - batch_target).abs(), batch_target > 0)

    def new_state(self) -> dict:
        return {"abs": 0.0, "rel": 0.0, "count": 0}

    @torch.no_grad()
    def update(self, state: dict, pred: Tensor, target: Tensor) -> None:
        self._check(pred, target, 1)
        valid = target > 0
        t = target[valid].double()
        err = (pred[valid].double() - t).abs()
        state["abs"] += float(err.sum())
        state["rel"] += float((err / t).sum())
        state["count"] += int(valid.sum())

    def compute(self, state: dict) -> dict[str, float]:
        n = state["count"]
        if n == 0:
            return _nan_metrics(self)
        return {"abs_err": state["abs"] / n, "rel_err": state["rel"] / n}


# ---------------------------------------------------------------------------------------------
# surface normals


def _channel_norm(x: Tensor, keepdim: bool = False) -> Tensor:
    """L2 norm over dim 1. Written out because ``torch.linalg.vector_norm`` over the channel dim
    of an NCHW tensor takes a slow strided path on CPU (~10x slower at 32x3x48x48)."""
    return x.square().sum(dim=1, keepdim=keepdim).sqrt()


def _unit(x: Tensor, eps: float = 1e-12) -> Tensor:
    """``F.normalize(x, dim=1)`` through :func:`_channel_norm` (same eps rule)."""
    return x / _channel_norm(x, keepdim=True).clamp_min(eps)


def _normal_angles(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Per-pixel angle (degrees) between normalised pred and target, and the validity mask.

    atan2(|p × t|, p · t) instead of acos(p · t): acos loses precision near 0° in float32
    (an error of ~0.02° at exact agreement), which would bias the within-11.25° counts.
    """
    p = _unit(pred.float())
    t = target.float()
    valid = _channel_norm(t) > 0.5
    t = _unit(t)
    dot = (p * t).sum(dim=1)
    cross = _channel_norm(torch.linalg.cross(p, t, dim=1))
    return torch.rad2deg(torch.atan2(cross, dot)), valid


@dataclass(frozen=True)
class NormalsTask(Task):
    """Surface normals: cosine loss; mean / median angle and within-t° percentages.

    The median is exact: ``update`` keeps every valid pixel's angle (float32 on the CPU, 4 bytes
    per valid pixel: ~0.3 GB for the full NYUv2 test split at 288x384), because a histogram
    median would differ from the literature's ``np.median`` by up to a bin width. For an even
    count the median is the mean of the two middle values, as ``np.median`` (LibMTL) computes it.
    """

    def loss(self, pred: Tensor, batch_target: Tensor) -> Tensor:
        self._check(pred, batch_target, 3)
        p = _unit(pred.float())
        valid = _channel_norm(batch_target) > 0.5
        t = _unit(batch_target.float())
        return _masked_mean(1.0 - (p * t).sum(dim=1), valid)

    def new_state(self) -> dict:
        return {"angles": []}

    @torch.no_grad()
    def update(self, state: dict, pred: Tensor, target: Tensor) -> None:
        self._check(pred, target, 3)
        angles, valid = _normal_angles(pred, target)
        state["angles"].append(angles[valid].cpu())

    def compute(self, state: dict) -> dict[str, float]:
        if not state["angles"]:
            return _nan_metrics(self)
        a = torch.cat(state["angles"])
        n = a.numel()
        if n == 0:
            return _nan_metrics(self)
        lo = a.kthvalue((n + 1) // 2).values.double()  # kthvalue is 1-indexed
        hi = a.kthvalue(n // 2 + 1).values.double()
        out = {"mean_angle": float(a.double().mean()), "median_angle": float((lo + hi) / 2)}
        for thr, key in zip(NORMAL_THRESHOLDS, ("within_11_25", "within_22_5", "within_30")):
            out[key] = 100.0 * float((a < thr).sum()) / n
        return out

    def predict(self, pred: Tensor) -> Tensor:
        return _unit(pred)


# ---------------------------------------------------------------------------------------------
# edges


@dataclass(frozen=True)
class EdgeTask(Task):
    """Edge detection: positive-weighted BCE with logits; F1 at sigmoid 0.5 and L1 of the prob."""

    pos_weight: float = EDGE_POS_WEIGHT

    def loss(self, pred: Tensor, batch_target: Tensor) -> Tensor:
        self._check(pred, batch_target, 1)
        if pred.numel() == 0:
            return 0 * pred.sum()
        weight = pred.new_tensor(self.pos_weight, dtype=torch.float32)
        return F.binary_cross_entropy_with_logits(
            pred.float(), batch_target.float(), pos_weight=weight)

    def new_state(self) -> dict:
        return {"tp": 0, "fp": 0, "fn": 0, "l1": 0.0, "count": 0}

    @torch.no_grad()
    def update(self, state: dict, pred: Tensor, target: Tensor) -> None:
        self._check(pred, target, 1)
        prob = torch.sigmoid(pred.double())
        p = prob >= 0.5
        t = target >= 0.5
        state["tp"] += int((p & t).sum())
        state["fp"] += int((p & ~t).sum())
        state["fn"] += int((~p & t).sum())
        state["l1"] += float((prob - target.double()).abs().sum())
        state["count"] += target.numel()

    def compute(self, state: dict) -> dict[str, float]:
        """F1 = 2TP / (2TP + FP + FN); 1.0 when there are no edges and none are predicted."""
        if state["count"] == 0:
            return _nan_metrics(self)
        denom = 2 * state["tp"] + state["fp"] + state["fn"]
        f1 = 1.0 if denom == 0 else 2 * state["tp"] / denom
        return {"f1": f1, "l1": state["l1"] / state["count"]}

    def predict(self, pred: Tensor) -> Tensor:
        return torch.sigmoid(pred)


# ---------------------------------------------------------------------------------------------
# keypoints and autoencoder (plain L1 regression over all pixels)


@dataclass(frozen=True)
class _L1Task(Task):
    """L1 regression over every pixel; the l1 metric uses the raw prediction, as the loss does."""

    def loss(self, pred: Tensor, batch_target: Tensor) -> Tensor:
        self._check(pred, batch_target, self.channels)
        if pred.numel() == 0:
            return 0 * pred.sum()
        return (pred.float() - batch_target).abs().mean()

    def new_state(self) -> dict:
        return {"l1": 0.0, "sq": 0.0, "count": 0}

    @torch.no_grad()
    def update(self, state: dict, pred: Tensor, target: Tensor) -> None:
        self._check(pred, target, self.channels)
        p = pred.double()
        t = target.double()
        state["l1"] += float((p - t).abs().sum())
        state["sq"] += float((p.clamp(0.0, 1.0) - t).square().sum())
        state["count"] += target.numel()

    def compute(self, state: dict) -> dict[str, float]:
        n = state["count"]
        if n == 0:
            return _nan_metrics(self)
        return {"l1": state["l1"] / n}

    def predict(self, pred: Tensor) -> Tensor:
        return pred.clamp(0.0, 1.0)


@dataclass(frozen=True)
class KeypointTask(_L1Task):
    """Keypoint heatmap regression (L1 over all pixels)."""


@dataclass(frozen=True)
class AutoencoderTask(_L1Task):
    """Image reconstruction: L1, and PSNR of the dataset-level MSE of the clamped prediction.

    PSNR = 10·log10(1 / MSE) with one MSE over all pixels of the dataset (not a mean of per-image
    PSNRs), so it accumulates exactly; MSE is floored at 1e-10, capping PSNR at 100 dB for a
    perfect reconstruction instead of returning inf.
    """

    def compute(self, state: dict) -> dict[str, float]:
        n = state["count"]
        if n == 0:
            return _nan_metrics(self)
        mse = max(state["sq"] / n, 1e-10)
        return {"l1": state["l1"] / n, "psnr": 10.0 * math.log10(1.0 / mse)}


# ---------------------------------------------------------------------------------------------
# registry


def get_task(name: str, num_classes: int | None = None) -> Task:
    """Build a task by name; ``num_classes`` applies to segmentation only (default 6)."""
    if name == "segmentation":
        n = DEFAULT_NUM_CLASSES if num_classes is None else num_classes
        if isinstance(n, bool) or not isinstance(n, int) or n < 2:
            raise TaskError(f"num_classes must be an integer >= 2, got {n!r}")
        return SegmentationTask(
            "segmentation", "label", n,
            (Metric("miou", True), Metric("pixel_acc", True)), "miou")
    if name == "depth":
        return DepthTask(
            "depth", "depth", 1, (Metric("abs_err", False), Metric("rel_err", False)), "abs_err")
    if name == "normals":
        return NormalsTask(
            "normals", "normal", 3,
            (Metric("mean_angle", False), Metric("median_angle", False),
             Metric("within_11_25", True), Metric("within_22_5", True),
             Metric("within_30", True)),
            "mean_angle")
    if name == "edges":
        return EdgeTask("edges", "edge", 1, (Metric("f1", True), Metric("l1", False)), "f1")
    if name == "keypoints":
        return KeypointTask("keypoints", "keypoint", 1, (Metric("l1", False),), "l1")
    if name == "autoencoder":
        return AutoencoderTask(
            "autoencoder", "image", 3, (Metric("l1", False), Metric("psnr", True)), "l1")
    if name == "disparity":  # Cityscapes: inverse depth, 0 = invalid, same metrics as depth
        return DepthTask(
            "disparity", "disparity", 1, (Metric("abs_err", False), Metric("rel_err", False)),
            "abs_err")
    if name == "parts":
        return SegmentationTask(
            "parts", "part", PART_CLASSES, (Metric("miou", True), Metric("pixel_acc", True)),
            "miou")
    raise TaskError(one_of(name, TASK_NAMES, "task"))


def get_tasks(names: Sequence[str], num_classes: int | None = None) -> list[Task]:
    """Build several tasks, rejecting unknown names, duplicates and an empty selection."""
    if isinstance(names, str):
        raise TaskError(f"expected a list of task names, got the string {names!r}; "
                        f"e.g. [{names!r}]")
    names = list(names)
    if not names:
        raise TaskError(f"no tasks given; choose from: {', '.join(TASK_NAMES)}")
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise TaskError(f"task {n!r} listed twice; each task may appear once")
        seen.add(n)
    return [get_task(n, num_classes) for n in names]


def evaluate(
    tasks: Sequence[Task],
    preds_and_targets: Iterable[tuple[Mapping[str, Tensor], Mapping[str, Tensor]]],
) -> dict[str, dict[str, float]]:
    """Dataset-level metrics for every task.

    Each item is ``(preds, batch)``: ``preds`` maps task name to raw head output, ``batch`` is
    the data batch (targets looked up by ``task.target``). Returns ``{task: {metric: value}}``,
    the layout :func:`delta_mtl` takes.
    """
    states = {t.name: t.new_state() for t in tasks}
    for preds, batch in preds_and_targets:
        for t in tasks:
            if t.name not in preds:
                raise TaskError(f"no prediction for task {t.name!r}; "
                                f"got: {', '.join(map(str, preds)) or 'none'}")
            if t.target not in batch:
                raise TaskError(f"batch has no {t.target!r} for task {t.name!r}; "
                                f"got: {', '.join(map(str, batch)) or 'none'}")
            t.update(states[t.name], preds[t.name], batch[t.target])
    return {t.name: t.compute(states[t.name]) for t in tasks}


# ---------------------------------------------------------------------------------------------
# multi-task summaries


def _div(a: float, b: float) -> float:
    """a / b with |b| floored at EPS (sign kept), so a zero reference gives a huge finite ratio."""
    if abs(b) < EPS:
        b = math.copysign(EPS, b)
    return a / b


def _lookup(table: Mapping[str, Mapping[str, Any]], task: Task, metric: str, what: str) -> float:
    if task.name not in table:
        raise TaskError(f"{what} has no results for task {task.name!r}; "
                        f"got: {', '.join(map(str, table)) or 'none'}")
    row = table[task.name]
    if metric not in row:
        raise TaskError(f"{what} has no metric {metric!r} for task {task.name!r}; "
                        f"got: {', '.join(map(str, row)) or 'none'}")
    return float(row[metric])


def _check_tasks(tasks: Sequence[Task]) -> None:
    if not tasks:
        raise TaskError("no tasks given for the multi-task summary")


def normalized_performance(
    metrics: Mapping[str, Mapping[str, float]],
    single: Mapping[str, Mapping[str, float]],
    tasks: Sequence[Task],
) -> dict[str, float]:
    """Per task, the mean over its metrics of M/M_s (higher better) or M_s/M (lower better).

    A fraction: 1.0 is single-task level, 0.0 total failure. Ratios are floored at 0 (they are
    non-negative for the non-negative metrics used here) so Δ in the "normalized" convention
    never drops below -100 %. NaN metrics propagate (a diverged model shows as a gap).
    """
    _check_tasks(tasks)
    out: dict[str, float] = {}
    for task in tasks:
        ratios = []
        for m in task.metrics:
            value = _lookup(metrics, task, m.name, "metrics")
            ref = _lookup(single, task, m.name, "single-task reference")
            r = _div(value, ref) if m.higher_is_better else _div(ref, value)
            ratios.append(0.0 if r < 0 else r)
        out[task.name] = sum(ratios) / len(ratios)
    return out


def _relative_change(
    metrics: Mapping[str, Mapping[str, float]],
    single: Mapping[str, Mapping[str, float]],
    tasks: Sequence[Task],
) -> dict[str, float]:
    """Per task, the mean over its metrics of s·(M − M_s)/M_s (MTAN / LibMTL Δm, a fraction)."""
    out: dict[str, float] = {}
    for task in tasks:
        changes = []
        for m in task.metrics:
            value = _lookup(metrics, task, m.name, "metrics")
            ref = _lookup(single, task, m.name, "single-task reference")
            sign = 1.0 if m.higher_is_better else -1.0
            changes.append(sign * _div(value - ref, ref))
        out[task.name] = sum(changes) / len(changes)
    return out


def _check_convention(convention: str) -> None:
    if convention not in DELTA_CONVENTIONS:
        raise TaskError(one_of(convention, DELTA_CONVENTIONS, "delta convention"))


def delta_mtl(
    metrics: Mapping[str, Mapping[str, float]],
    single: Mapping[str, Mapping[str, float]],
    tasks: Sequence[Task],
    convention: str = "normalized",
) -> float:
    """Multi-task performance relative to single-task models, in PERCENT (0 = on par).

    ``"normalized"`` (SIMO paper tables): 100·(mean_t normalized_performance_t − 1), ≥ −100.
    ``"relative"`` (MTAN / LibMTL Δm): 100·mean_t mean_m s·(M − M_s)/M_s, unbounded below.
    Both weigh tasks equally and metrics equally within a task; they differ for lower-is-better
    metrics (M_s/M − 1 vs (M_s − M)/M_s), so always label figures with :func:`delta_label`.
    """
    _check_convention(convention)
    _check_tasks(tasks)
    if convention == "normalized":
        per_task = normalized_performance(metrics, single, tasks)
        return 100.0 * (sum(per_task.values()) / len(per_task) - 1.0)
    per_task = _relative_change(metrics, single, tasks)
    return 100.0 * sum(per_task.values()) / len(per_task)


def delta_label(convention: str = "normalized") -> str:
    """Axis / column label naming the convention, so no figure mixes the two unnoticed."""
    _check_convention(convention)
    return _DELTA_LABELS[convention]
