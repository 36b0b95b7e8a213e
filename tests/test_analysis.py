"""Diagnostics: CKA and cosine properties, λ selection, plateau reading, label statistics."""
from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import torch

from simo import analysis
from simo.tasks import get_task


def test_linear_cka_invariances():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 8, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=g, dtype=torch.float64))
    assert analysis.linear_cka(x, x) == pytest.approx(1.0)
    assert analysis.linear_cka(x, 3.0 * x @ q) == pytest.approx(1.0)  # rotation + scale
    y = torch.randn(200, 8, generator=g, dtype=torch.float64)
    assert analysis.linear_cka(x, y) < 0.3  # independent features
    # cosine is NOT rotation invariant: that is what a fixed head sees
    assert analysis.mean_cosine(x, x) == pytest.approx(1.0)
    assert analysis.mean_cosine(x, x @ q) < 0.9


def test_block_similarity_of_identical_encoders_is_one(smoke):
    from simo.models import build_encoder

    enc = build_encoder(smoke.model, smoke.data.image_size)
    sim = analysis.block_similarity(enc.vit, enc.vit, torch.rand(4, 3, 32, 32))
    assert len(sim["cka"]) == smoke.model.depth
    assert all(v == pytest.approx(1.0) for v in sim["cka"] + sim["cosine"])


def test_select_on_validation_picks_best_and_breaks_ties_low():
    best, scores = analysis.select_on_validation(lambda v: -(v - 0.3) ** 2, [0.0, 0.3, 0.6])
    assert best == 0.3 and set(scores) == {0.0, 0.3, 0.6}
    best, _ = analysis.select_on_validation(lambda v: 1.0, [0.5, 0.1, 0.9])
    assert best == 0.1


@given(st.floats(0.0, 1.0), st.integers(2, 4))
def test_coarse_to_fine_selection_finds_the_best_of_a_unimodal_curve(peak, stride):
    grid = [round(0.1 * i, 1) for i in range(11)]
    calls = []

    def score(v):
        calls.append(v)
        return -abs(v - peak)

    full, _ = analysis.select_on_validation(lambda v: -abs(v - peak), grid)
    best, scores = analysis.select_on_validation(score, grid, stride=stride)
    assert best == full
    assert len(calls) == len(set(calls)) == len(scores) < len(grid)
    assert 0.0 in scores and 1.0 in scores


def test_selection_prefetches_each_round_before_scoring_it():
    grid = [round(0.1 * i, 1) for i in range(11)]
    rounds, scored = [], []

    def score(v):
        assert any(v in r for r in rounds), f"{v} scored before it was prefetched"
        scored.append(v)
        return -abs(v - 0.3)

    best, _ = analysis.select_on_validation(score, grid, stride=2, prefetch=rounds.append)
    assert best == 0.3
    assert rounds[0] == analysis.first_round(grid, 2) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert sorted(v for r in rounds for v in r) == sorted(scored)


def _hist(values, metric="abs_err"):
    return [{"step": 100 * (i + 1), "val": {"depth": {metric: v}}} for i, v in enumerate(values)]


def test_plateau_gain_reads_the_last_quarter():
    depth = get_task("depth")
    flat = _hist([1.0, 0.5, 0.4, 0.4])
    assert analysis.plateau_gain(flat, depth) == pytest.approx(0.0)
    improving = _hist([1.0, 0.8, 0.6, 0.5])  # lower is better: 0.6 -> 0.5 over the last quarter
    assert analysis.plateau_gain(improving, depth) == pytest.approx(0.2)
    assert math.isnan(analysis.plateau_gain(_hist([1.0]), depth))


def test_better_respects_direction():
    assert analysis.better(get_task("depth"), 0.1, 0.2)
    assert analysis.better(get_task("segmentation"), 0.6, 0.5)


def test_label_statistics_and_saturation():
    data = {"label": torch.tensor([[[0, 0], [1, -1]]]), "depth": torch.tensor([[[[1.0, 0.0],
                                                                               [3.0, 2.0]]]]),
            "edge": torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])}
    s = analysis.label_statistics(data, ["a", "b"])
    assert s["class_frequency"] == pytest.approx({"a": 2 / 3, "b": 1 / 3})
    assert s["depth"] == {"min": 1.0, "median": 2.0, "max": 3.0}
    assert s["edge_fraction"] == 0.25 and s["invalid_label_fraction"] == 0.25
    gray = torch.full((1, 3, 2, 2), 0.5)
    red = torch.zeros(1, 3, 2, 2)
    red[:, 0] = 1.0
    assert analysis.mean_saturation(gray) == 0.0 and analysis.mean_saturation(red) == 1.0


def test_learned_layer_coefficients_shape_and_freeze(smoke):
    from simo.models import build_model
    from simo.tasks import get_tasks

    tasks = get_tasks(["depth"])
    model = build_model(smoke, tasks)
    theta0 = {k: v.clone() for k, v in model.encoder.vit.state_dict().items()}
    tv = [{k: 0.01 * torch.ones_like(v) if v.is_floating_point() else v for k, v in theta0.items()}]
    data = {"image": torch.rand(8, 3, 32, 32), "depth": torch.rand(8, 1, 32, 32) + 0.5}
    flags = [p.requires_grad for p in model.parameters()]
    lam = analysis.learn_layer_coefficients(model, tasks, theta0, tv, data, init=0.5, steps=3,
                                            batch_size=4)
    assert lam.shape == (1, smoke.model.depth) and not torch.equal(lam, torch.full_like(lam, 0.5))
    assert [p.requires_grad for p in model.parameters()] == flags


def test_mean_ci_matches_students_t_and_reports_seeds():
    r = analysis.mean_ci([1.0, 2.0, 3.0])
    assert r["mean"] == pytest.approx(2.0)
    half = 4.303 * 1.0 / 3 ** 0.5  # t(0.975, df=2) · sd / sqrt(n)
    assert r["ci95"] == pytest.approx([2.0 - half, 2.0 + half], rel=1e-4)
    assert r["seeds"] == [1.0, 2.0, 3.0]
    assert analysis.mean_ci([5.0])["ci95"] == [5.0, 5.0]
    with pytest.raises(ValueError):
        analysis.mean_ci([])


def test_samples_seen_replays_the_training_loop(smoke):
    from simo.train import Phase, run_phases

    model = torch.nn.Linear(1, 1)
    data = {"x": torch.rand(40, 1)}
    phase = Phase("p", 7, [{"params": list(model.parameters()), "lr": 0.1}],
                  lambda b, g: (model(b["x"]).square().mean(), {}))
    res = run_phases(model, [phase], data, batch_size=8, seed=3, progress=False)
    counts = analysis.samples_seen(40, 8, seed=3, steps=7)
    assert counts[-1] == res.samples
    assert counts == sorted(counts) and counts[0] <= 8


# ------------------------------------------------------------------ task relationships -------------

def _sweep(values):
    """Depth metrics along λ (abs_err and rel_err, lower is better; the single-task model has 1.0)."""
    return {lam: {"depth": {"abs_err": v, "rel_err": v}} for lam, v in values.items()}


def test_transfer_matrix_is_the_best_normalized_gain_over_the_pretrained_encoder():
    depth = get_task("depth")
    single = {"depth": {"abs_err": 1.0, "rel_err": 1.0}}
    sweeps = {"depth": _sweep({0.0: 2.0, 0.5: 1.25, 1.0: 1.0}),  # n: 0.5 -> 0.8 -> 1.0
              "normals": _sweep({0.0: 2.0, 0.5: 1.6, 1.0: 2.5})}  # best n = 0.625
    curves = analysis.sweep_curves(sweeps, single, [depth])
    assert curves["depth"]["depth"] == pytest.approx({0.0: 0.5, 0.5: 0.8, 1.0: 1.0})
    m = analysis.transfer_matrix(curves)
    assert m["depth"]["depth"] == pytest.approx(1.0)
    assert m["normals"]["depth"] == pytest.approx((0.625 - 0.5) / 0.5)
    hurt = analysis.transfer_matrix(analysis.sweep_curves(
        {"normals": _sweep({0.0: 2.0, 1.0: 4.0})}, single, [depth]))
    assert hurt["normals"]["depth"] == 0.0  # λ = 0 itself is on the grid: never below 0
    with pytest.raises(ValueError, match="must contain 0"):
        analysis.transfer_matrix({"depth": {"depth": {0.5: 0.8}}})


def test_pair_affinity_is_relative_to_the_task_trained_alone():
    seg, depth = get_task("segmentation", 6), get_task("depth")
    alone = {"segmentation": {"segmentation": {"miou": 0.5, "pixel_acc": 0.8}},
             "depth": {"depth": {"abs_err": 1.0, "rel_err": 2.0}}}
    joint = {("segmentation", "depth"): {"segmentation": {"miou": 0.55, "pixel_acc": 0.88},
                                         "depth": {"abs_err": 1.25, "rel_err": 2.5}}}
    a = analysis.pair_affinity(joint, alone, [seg, depth])
    assert a["depth"]["segmentation"] == pytest.approx(10.0)  # seg gains 10 % next to depth
    assert a["segmentation"]["depth"] == pytest.approx(-20.0)  # depth: n = 1/1.25


@settings(deadline=None)  # the first call imports pandas
@given(st.lists(st.floats(-5, 5), min_size=4, max_size=12, unique=True))
def test_spearman_is_one_for_monotone_maps_and_minus_one_when_reversed(xs):
    assert analysis.spearman(xs, [3 * x for x in xs]) == pytest.approx(1.0)
    assert analysis.spearman(xs, [-x for x in xs]) == pytest.approx(-1.0)
    assert math.isnan(analysis.spearman(xs[:2], xs[:2]))


def test_off_diagonal_order_and_task_vector_cosines():
    names = ["a", "b"]
    assert analysis.off_diagonal({"a": {"a": 9, "b": 1}, "b": {"a": 2, "b": 9}}, names) == [1, 2]
    t1 = {"blocks.0.w": torch.tensor([1.0, 0.0]), "blocks.1.w": torch.tensor([1.0, 1.0]),
          "norm.w": torch.tensor([1.0])}
    t2 = {"blocks.0.w": torch.tensor([0.0, 2.0]), "blocks.1.w": torch.tensor([3.0, 3.0]),
          "norm.w": torch.tensor([-1.0])}
    overall, per_block = analysis.task_vector_cosines([t1, t2], names)
    assert list(per_block) == ["block 0", "block 1", "other"]
    assert per_block["block 0"]["a"]["b"] == pytest.approx(0.0)
    assert per_block["block 1"]["a"]["b"] == pytest.approx(1.0)
    assert per_block["other"]["a"]["b"] == pytest.approx(-1.0)
    assert overall["a"]["a"] == pytest.approx(1.0)
    assert overall["a"]["b"] == pytest.approx(5.0 / (2.0 * 23 ** 0.5))  # dot 5, norms 2 and √23


def test_dataset_facts_name_the_extreme_classes_and_the_saturation_shift():
    results = {"class_frequency": {"wall": 0.6, "chair": 0.01, "floor": 0.39},
               "splits": {"train": 256}, "image_size": 64,
               "depth": {"min": 0.5, "median": 2.0, "max": 9.0},
               "saturation": {"pretrain": 0.2, "task": 0.4}}
    lines = analysis.dataset_facts(results)
    assert lines[0] == ("- 256 training scenes of 64x64 px; the most common class is wall (60% of "
                        "pixels), the rarest chair (1.0%).")
    assert "from 0.50 to 9.00 (median 2.00)" in lines[1]
    assert len(lines) == 3 and "are less saturated (0.20) than task scenes (0.40)" in lines[2]
    more = analysis.dataset_facts({**results, "edge_fraction": 0.05,
                                   "saturation": {"pretrain": 0.5, "task": 0.4}})
    assert "Occlusion edges cover 5.0%" in more[2] and "are more saturated" in more[3]


def _drive(gen, score):
    """Run a :func:`simo.analysis.search` generator with ``score`` to its result."""
    try:
        values = next(gen)
        while True:
            values = gen.send({v: score(v) for v in values})
    except StopIteration as done:
        return done.value


@pytest.mark.parametrize("stride", [1, 2])
def test_search_widens_its_grid_while_the_best_is_on_the_upper_edge(stride):
    peak = 1.4  # beyond the grid's 1.0: a fixed grid would pick its edge
    best, seen = _drive(analysis.search([0.0, 0.2, 0.4, 0.6, 0.8, 1.0], stride, (0.0, 3.0)),
                        lambda v: -(v - peak) ** 2)
    assert best == pytest.approx(peak)
    assert analysis.is_interior(best, seen)
    assert max(seen) == pytest.approx(1.6)  # one value past the peak, no further


def test_search_stops_widening_at_its_bounds_and_never_below_them():
    best, seen = _drive(analysis.search([0.0, 0.5, 1.0], 1, (0.0, 2.0)), lambda v: v)
    assert best == 2.0 and max(seen) == 2.0 and not analysis.is_interior(best, seen)
    best, seen = _drive(analysis.search([0.0, 0.5, 1.0], 1, (0.0, 2.0)), lambda v: -v)
    assert best == 0.0 and min(seen) == 0.0  # λ < 0 is outside the bounds


def test_search_widens_downwards_on_a_log_grid():
    best, seen = _drive(analysis.search([-1.0, 0.0, 1.0], 1, (-3.0, 3.0)),
                        lambda k: -(k + 2.0) ** 2)
    assert best == -2.0 and min(seen) == -3.0


def test_search_without_bounds_keeps_its_grid():
    best, seen = _drive(analysis.search([0.0, 0.5, 1.0], 1), lambda v: v)
    assert best == 1.0 and sorted(seen) == [0.0, 0.5, 1.0]
