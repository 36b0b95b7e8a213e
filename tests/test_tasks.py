"""Hand-computed checks of task losses, metrics and the Δ summaries (tiny tensors, CPU only)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from simo.errors import TaskError
from simo.tasks import (
    DELTA_CONVENTIONS,
    TASK_NAMES,
    Metric,
    Task,
    delta_label,
    delta_mtl,
    evaluate,
    get_task,
    get_tasks,
    normalized_performance,
)


def _one_hot_logits(labels: torch.Tensor, c: int) -> torch.Tensor:
    """(B,H,W) class map -> (B,C,H,W) logits whose argmax is that map."""
    return F.one_hot(labels, c).permute(0, 3, 1, 2).float() * 5.0


# ------------------------------------------------------------------------------- registry


def test_registry_names_and_shapes() -> None:
    tasks = get_tasks(list(TASK_NAMES))
    assert [t.name for t in tasks] == list(TASK_NAMES)
    assert [t.target for t in tasks] == ["label", "depth", "normal", "edge", "keypoint", "image",
                                         "disparity", "part"]
    assert [t.channels for t in tasks] == [6, 1, 3, 1, 1, 3, 1, 10]
    for t in tasks:
        assert isinstance(t, Task)
        assert t.main_metric in t.metric_names
        assert all(isinstance(m, Metric) for m in t.metrics)
    assert get_task("segmentation", num_classes=13).channels == 13
    assert get_task("depth", num_classes=13).channels == 1  # ignored for other tasks


def test_get_task_errors() -> None:
    with pytest.raises(TaskError) as e:
        get_task("semseg")
    assert str(e.value) == (
        "unknown task 'semseg'; choose one of: "
        "segmentation, depth, normals, edges, keypoints, autoencoder, disparity, parts"
    )
    with pytest.raises(TaskError, match="listed twice"):
        get_tasks(["depth", "depth"])
    with pytest.raises(TaskError, match="unknown task 'nope'"):
        get_tasks(["depth", "nope"])
    with pytest.raises(TaskError, match="no tasks given"):
        get_tasks([])
    with pytest.raises(TaskError, match="expected a list"):
        get_tasks("depth")
    with pytest.raises(TaskError, match="num_classes must be an integer >= 2"):
        get_task("segmentation", num_classes=1)


def test_shape_mismatch_is_task_error() -> None:
    depth = get_task("depth")
    with pytest.raises(TaskError, match=r"prediction must have shape \(B,1,H,W\)"):
        depth.loss(torch.zeros(1, 2, 4, 4), torch.ones(1, 1, 4, 4))
    with pytest.raises(TaskError, match="target 'depth' must have shape"):
        depth.loss(torch.zeros(1, 1, 4, 4), torch.ones(1, 1, 4, 5))
    seg = get_task("segmentation", num_classes=3)
    with pytest.raises(TaskError, match="labels must be -1"):
        seg.update(seg.new_state(), torch.zeros(1, 3, 1, 2), torch.tensor([[[0, 3]]]))


# ------------------------------------------------------------------------------- segmentation

# 2x3 image, 4 classes (class 3 never occurs nor is predicted -> excluded from mIoU).
SEG_TARGET = torch.tensor([[[0, 0, 1], [1, 2, -1]]])
SEG_PRED = torch.tensor([[[0, 1, 1], [1, 1, 0]]])


def test_segmentation_hand_case() -> None:
    seg = get_task("segmentation", num_classes=4)
    state = seg.new_state()
    seg.update(state, _one_hot_logits(SEG_PRED, 4), SEG_TARGET)
    out = seg.compute(state)
    # class 0: tp 1, fn 1 -> 1/2; class 1: tp 2, fp 2 -> 2/4; class 2: tp 0, fn 1 -> 0.
    assert out["miou"] == pytest.approx((0.5 + 0.5 + 0.0) / 3)
    assert out["pixel_acc"] == pytest.approx(3 / 5)
    assert state["confusion"].sum() == 5  # the ignored pixel is not counted
    assert seg.predict(_one_hot_logits(SEG_PRED, 4)).equal(SEG_PRED)


def test_segmentation_accumulation_equals_one_shot() -> None:
    g = torch.Generator().manual_seed(0)
    seg = get_task("segmentation", num_classes=5)
    logits = torch.randn(4, 5, 6, 7, generator=g)
    target = torch.randint(-1, 5, (4, 6, 7), generator=g)
    one, two = seg.new_state(), seg.new_state()
    seg.update(one, logits, target)
    seg.update(two, logits[:1], target[:1])
    seg.update(two, logits[1:], target[1:])
    assert seg.compute(one) == seg.compute(two)
    assert torch.equal(one["confusion"], two["confusion"])


# ------------------------------------------------------------------------------- depth


def test_depth_metrics_with_invalid_pixels() -> None:
    depth = get_task("depth")
    pred = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    target = torch.tensor([[[[2.0, 0.0], [1.0, 4.0]]]])  # one invalid pixel (0)
    state = depth.new_state()
    depth.update(state, pred, target)
    out = depth.compute(state)
    assert out["abs_err"] == pytest.approx((1 + 2 + 0) / 3)
    assert out["rel_err"] == pytest.approx((1 / 2 + 2 / 1 + 0) / 3)
    assert depth.loss(pred, target).item() == pytest.approx(1.0)
    # accumulating in two halves matches
    split = depth.new_state()
    depth.update(split, pred[..., :1, :], target[..., :1, :])
    depth.update(split, pred[..., 1:, :], target[..., 1:, :])
    assert depth.compute(split) == pytest.approx(out)


# ------------------------------------------------------------------------------- normals


def test_normals_known_angles() -> None:
    normals = get_task("normals")
    # pixels: same direction (0°), orthogonal (90°), unnormalised 45°, invalid target.
    pred = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [2.0, 2.0, 0.0], [0.0, 0.0, 1.0]])
    target = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    pred = pred.T.reshape(1, 3, 1, 4)
    target = target.T.reshape(1, 3, 1, 4)
    state = normals.new_state()
    normals.update(state, pred, target)
    out = normals.compute(state)
    assert out["mean_angle"] == pytest.approx(45.0, abs=1e-4)
    assert out["median_angle"] == pytest.approx(45.0, abs=1e-4)
    for key in ("within_11_25", "within_22_5", "within_30"):
        assert out[key] == pytest.approx(100 / 3)
    # loss: mean of 1 - cos over valid pixels = (0 + 1 + (1 - cos 45°)) / 3
    expected = (0.0 + 1.0 + 1.0 - math.cos(math.pi / 4)) / 3
    assert normals.loss(pred, target).item() == pytest.approx(expected, abs=1e-6)
    assert normals.predict(pred).norm(dim=1).allclose(torch.ones(1, 1, 4))


def test_normals_median_exact_over_batches() -> None:
    g = torch.Generator().manual_seed(1)
    normals = get_task("normals")
    batches = []
    for hw in ((3, 5), (4, 2)):  # odd and even totals are both exercised below
        target = F.normalize(torch.randn(2, 3, *hw, generator=g), dim=1)
        target[:, :, 0, 0] = 0.0  # invalid pixels
        batches.append((torch.randn(2, 3, *hw, generator=g), target))
    state = normals.new_state()
    for pred, target in batches:
        normals.update(state, pred, target)
    angles = torch.cat(state["angles"])
    assert angles.numel() == 2 * (15 - 1) + 2 * (8 - 1)  # even count
    out = normals.compute(state)
    assert out["median_angle"] == pytest.approx(float(np.median(angles.double().numpy())))
    # odd count: equals torch.median exactly
    odd = {"angles": [angles[:-1]]}
    assert normals.compute(odd)["median_angle"] == float(torch.median(angles[:-1]))
    # angles agree with the acos definition
    pred, target = batches[0]
    p, t = F.normalize(pred, dim=1), target
    valid = t.norm(dim=1) > 0.5
    ref = torch.rad2deg(torch.acos((p * t).sum(1).clamp(-1, 1)))[valid]
    assert torch.allclose(state["angles"][0], ref, atol=1e-3)


# ------------------------------------------------------------------------------- edges


def test_edges_f1_hand_case() -> None:
    edges = get_task("edges")
    target = torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0, 0.0]).reshape(1, 1, 2, 3)
    hits = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 0.0]).reshape(1, 1, 2, 3)
    logits = torch.where(hits > 0, 2.0, -2.0)
    state = edges.new_state()
    edges.update(state, logits, target)
    out = edges.compute(state)
    # tp 2, fp 1, fn 1 -> F1 = 4 / 6
    assert out["f1"] == pytest.approx(2 / 3)
    s = torch.sigmoid(torch.tensor(2.0)).item()
    # 4 correct pixels are off by 1 - s, the 2 wrong ones by s
    assert out["l1"] == pytest.approx((4 * (1 - s) + 2 * s) / 6)
    assert edges.predict(logits).min() > 0 and edges.predict(logits).max() < 1
    # no edges and none predicted: perfect
    empty = edges.new_state()
    edges.update(empty, torch.full((1, 1, 2, 2), -3.0), torch.zeros(1, 1, 2, 2))
    assert edges.compute(empty)["f1"] == 1.0


def test_edges_positive_weight() -> None:
    edges = get_task("edges")
    zero = torch.zeros(1, 1, 1, 2)
    pos = edges.loss(zero, torch.ones(1, 1, 1, 2)).item()
    neg = edges.loss(zero, torch.zeros(1, 1, 1, 2)).item()
    assert pos == pytest.approx(4.0 * neg)


# ------------------------------------------------------------------------------- L1 tasks


def test_keypoints_and_autoencoder_metrics() -> None:
    kp = get_task("keypoints")
    state = kp.new_state()
    kp.update(state, torch.tensor([[[[0.5, 1.0]]]]), torch.tensor([[[[0.0, 1.0]]]]))
    assert kp.compute(state) == {"l1": pytest.approx(0.25)}
    ae = get_task("autoencoder")
    state = ae.new_state()
    image = torch.full((1, 3, 2, 2), 0.5)
    ae.update(state, image + 0.1, image)
    out = ae.compute(state)
    assert out["l1"] == pytest.approx(0.1)
    assert out["psnr"] == pytest.approx(20.0)  # MSE 0.01 -> 10 log10(100)
    # PSNR is computed on the clamped prediction
    state = ae.new_state()
    ae.update(state, torch.full((1, 3, 1, 1), 3.0), torch.ones(1, 3, 1, 1))
    assert ae.compute(state)["psnr"] == pytest.approx(100.0)
    assert ae.compute(state)["l1"] == pytest.approx(2.0)


def test_empty_state_gives_nan() -> None:
    for t in get_tasks(list(TASK_NAMES)):
        assert all(math.isnan(v) for v in t.compute(t.new_state()).values())


def test_evaluate_matches_manual_update() -> None:
    tasks = get_tasks(["segmentation", "depth"], num_classes=4)
    preds = {"segmentation": _one_hot_logits(SEG_PRED, 4), "depth": torch.ones(1, 1, 2, 3)}
    batch = {"label": SEG_TARGET, "depth": torch.full((1, 1, 2, 3), 2.0)}
    out = evaluate(tasks, [(preds, batch)])
    assert out["segmentation"]["miou"] == pytest.approx(1 / 3)
    assert out["depth"] == pytest.approx({"abs_err": 1.0, "rel_err": 0.5})
    with pytest.raises(TaskError, match="no prediction for task 'depth'"):
        evaluate(tasks, [({"segmentation": preds["segmentation"]}, batch)])


# ------------------------------------------------------------------------------- losses


def _batch(g: torch.Generator) -> dict[str, torch.Tensor]:
    b, h, w = 2, 4, 5
    depth = torch.rand(b, 1, h, w, generator=g) + 0.5
    depth[:, :, 0] = 0.0
    normal = F.normalize(torch.randn(b, 3, h, w, generator=g), dim=1)
    normal[:, :, 0] = 0.0
    label = torch.randint(0, 6, (b, h, w), generator=g)
    label[:, 0] = -1
    return {
        "image": torch.rand(b, 3, h, w, generator=g),
        "label": label,
        "depth": depth,
        "normal": normal,
        "edge": (torch.rand(b, 1, h, w, generator=g) < 0.2).float(),
        "keypoint": torch.rand(b, 1, h, w, generator=g),
        "disparity": depth.clone(),
        "part": torch.randint(-1, 10, (b, h, w), generator=g),
    }


@pytest.mark.parametrize("name", TASK_NAMES)
def test_loss_decreases_with_one_sgd_step(name: str) -> None:
    g = torch.Generator().manual_seed(2)
    task = get_task(name)
    target = _batch(g)[task.target]
    pred = torch.nn.Parameter(torch.randn(2, task.channels, 4, 5, generator=g))
    opt = torch.optim.SGD([pred], lr=5.0 if name in ("segmentation", "parts") else 0.5)
    before = task.loss(pred, target)
    assert before.dim() == 0 and torch.isfinite(before)
    before.backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    opt.step()
    with torch.no_grad():
        after = task.loss(pred, target)
    assert after < before


@pytest.mark.parametrize("name", ["segmentation", "depth", "normals"])
def test_loss_finite_without_valid_pixels(name: str) -> None:
    task = get_task(name)
    invalid = {
        "segmentation": torch.full((1, 2, 2), -1),
        "depth": torch.zeros(1, 1, 2, 2),
        "normals": torch.zeros(1, 3, 2, 2),
    }[name]
    pred = torch.randn(1, task.channels, 2, 2, requires_grad=True)
    loss = task.loss(pred, invalid)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(pred.grad).all()


def test_loss_ignores_nan_at_invalid_depth() -> None:
    depth = get_task("depth")
    pred = torch.tensor([[[[1.0, float("nan")]]]], requires_grad=True)
    loss = depth.loss(pred, torch.tensor([[[[2.0, 0.0]]]]))
    loss.backward()
    assert loss.item() == 1.0 and torch.isfinite(pred.grad).all()


# ------------------------------------------------------------------------------- Δ summaries

TWO = get_tasks(["segmentation", "depth"])
SINGLE = {"segmentation": {"miou": 0.5, "pixel_acc": 0.8},
          "depth": {"abs_err": 0.4, "rel_err": 0.2}}
MULTI = {"segmentation": {"miou": 0.6, "pixel_acc": 0.8},
         "depth": {"abs_err": 0.5, "rel_err": 0.1}}


def test_delta_hand_computed() -> None:
    perf = normalized_performance(MULTI, SINGLE, TWO)
    assert perf == pytest.approx({"segmentation": (1.2 + 1.0) / 2,
                                  "depth": (0.4 / 0.5 + 0.2 / 0.1) / 2})
    # normalized: mean(1.1, 1.4) - 1 = 0.25
    assert delta_mtl(MULTI, SINGLE, TWO) == pytest.approx(25.0)
    # relative: seg (0.2 + 0) / 2 = 0.1; depth (-0.25 + 0.5) / 2 = 0.125; mean 0.1125
    assert delta_mtl(MULTI, SINGLE, TWO, "relative") == pytest.approx(11.25)
    for conv in DELTA_CONVENTIONS:
        assert delta_mtl(SINGLE, SINGLE, TWO, conv) == 0.0


def test_delta_catastrophic_model() -> None:
    broken = {"segmentation": {"miou": 0.0, "pixel_acc": 0.0},
              "depth": {"abs_err": math.inf, "rel_err": math.inf}}
    assert delta_mtl(broken, SINGLE, TWO) == pytest.approx(-100.0)
    awful = {"segmentation": {"miou": 0.0, "pixel_acc": 0.0},
             "depth": {"abs_err": 40.0, "rel_err": 20.0}}
    assert -100.0 < delta_mtl(awful, SINGLE, TWO) < -70.0
    # relative does not cap: seg -1, depth -99 -> mean -50 -> -5000 %
    assert delta_mtl(awful, SINGLE, TWO, "relative") == pytest.approx(-5000.0)


def test_delta_zero_reference_is_guarded() -> None:
    depth = [get_task("depth")]
    perfect = {"depth": {"abs_err": 0.0, "rel_err": 0.0}}
    ok = {"depth": {"abs_err": 0.1, "rel_err": 0.1}}
    assert math.isfinite(delta_mtl(ok, perfect, depth))
    assert math.isfinite(delta_mtl(perfect, perfect, depth, "relative"))


def test_delta_errors_and_labels() -> None:
    with pytest.raises(TaskError) as e:
        delta_mtl(MULTI, SINGLE, TWO, "mtan")
    assert str(e.value) == "unknown delta convention 'mtan'; choose one of: normalized, relative"
    with pytest.raises(TaskError, match="metrics has no results for task 'depth'"):
        delta_mtl({"segmentation": MULTI["segmentation"]}, SINGLE, TWO)
    with pytest.raises(TaskError, match="no metric 'rel_err' for task 'depth'"):
        delta_mtl({**MULTI, "depth": {"abs_err": 0.5}}, SINGLE, TWO, "relative")
    with pytest.raises(TaskError, match="single-task reference has no results"):
        delta_mtl(MULTI, {"depth": SINGLE["depth"]}, TWO)
    assert delta_label("normalized") == "Δ_MTL (normalized perf., %)"
    assert delta_label("relative") == "Δm (relative change, %)"
    with pytest.raises(TaskError, match="choose one of: normalized, relative"):
        delta_label("x")


ALL = get_tasks(list(TASK_NAMES))
_positive = st.floats(min_value=1e-3, max_value=1e3, allow_nan=False)
_metric_values = st.lists(_positive, min_size=sum(len(t.metrics) for t in ALL),
                          max_size=sum(len(t.metrics) for t in ALL))


@settings(max_examples=60, deadline=None)
@given(values=_metric_values, pick=st.integers(min_value=0), factor=st.floats(1.01, 10.0),
       conv=st.sampled_from(DELTA_CONVENTIONS))
def test_delta_property(values: list[float], pick: int, factor: float, conv: str) -> None:
    it = iter(values)
    single = {t.name: {m.name: next(it) for m in t.metrics} for t in ALL}
    assert delta_mtl(single, single, ALL, conv) == 0.0
    flat = [(t.name, m) for t in ALL for m in t.metrics]
    task, metric = flat[pick % len(flat)]
    better = {k: dict(v) for k, v in single.items()}
    worse = {k: dict(v) for k, v in single.items()}
    up, down = single[task][metric.name] * factor, single[task][metric.name] / factor
    better[task][metric.name] = up if metric.higher_is_better else down
    worse[task][metric.name] = down if metric.higher_is_better else up
    assert delta_mtl(better, single, ALL, conv) > 0.0
    assert delta_mtl(worse, single, ALL, conv) < 0.0
