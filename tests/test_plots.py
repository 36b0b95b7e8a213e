"""Figures and results carry their provenance (commit, profile, seed, versions, device)."""
from __future__ import annotations

import json

import matplotlib.pyplot as plt
from PIL import Image

from simo import paths, plots


def test_figure_and_results_record_where_they_came_from(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "BUILD", tmp_path)  # smoke figures go under BUILD
    plots.activate("smoke", 3)
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    assert plots.save_figure(fig, "zz_provenance_test", "line") is None  # a cell echoes no path
    png = plots.WRITTEN[-1]
    meta = json.loads(Image.open(png).text["Description"])
    assert meta["profile"] == "smoke" and meta["seed"] == 3
    assert meta["run"] is None and meta["parameters"] == {} and meta["dirty"] in (True, False)
    assert {"git_commit", "device", "versions"} <= set(meta) and "torch" in meta["versions"]
    res = json.loads(plots.save_results("zz_provenance_test", {"x": 1 / 3}).read_text())
    assert res["x"] == 0.333333 and res["meta"] == meta
    assert png.parent == paths.figures_dir("smoke", "zz_provenance_test")


def test_a_non_default_run_writes_under_build_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "RUNS", tmp_path / "runs")
    plots.activate("tiny", 1, run="tiny-seed1", parameters={"profile": "tiny", "seed": 1})
    try:
        fig, ax = plt.subplots()
        plots.save_figure(fig, "zz_provenance_test", "line")
        assert plots.WRITTEN[-1] == tmp_path / "runs" / "tiny-seed1" / "zz_provenance_test" / "line.png"
        res = json.loads(plots.save_results("zz_provenance_test", {}).read_text())
        assert res["meta"]["parameters"] == {"profile": "tiny", "seed": 1}
        assert not (paths.FIGURES / "zz_provenance_test").exists()
    finally:
        plots.activate("tiny", 0)


# --- readable labels, fixed styles and axis helpers -----------------------------------------------
import itertools  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.colors import to_rgb  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from simo import tasks as simo_tasks  # noqa: E402
from simo.errors import SimoError  # noqa: E402

ALL_TASKS = ["segmentation", "depth", "normals", "edges", "keypoints", "autoencoder", "disparity",
             "parts"]


def test_metric_label_is_readable_with_unit_and_the_task_s_own_direction():
    for name in ALL_TASKS:
        task = simo_tasks.get_task(name)
        for m in task.metrics:
            label = plots.metric_label(m.name, "val", name)
            assert label.startswith(f"{name} ") and " on val" in label
            assert m.name not in label.replace(name, "")  # no raw key such as mean_angle
            assert label.endswith("(higher is better)" if m.higher_is_better else "(lower is better)")
            # the table agrees with the task, so a label without task= is right too
            assert plots.METRIC_LABELS[m.name][2] == (plots.HIGHER if m.higher_is_better
                                                      else plots.LOWER)
    assert plots.metric_label("mean_angle", task="normals") == "normals mean angle, ° (lower is better)"
    assert plots.metric_label("delta_mtl", "test") == "Δ_MTL (normalized perf.) on test, % (higher is better)"
    assert "Δm" in plots.metric_label("delta_mtl", convention="relative")
    assert "\n(" in plots.metric_label("miou", task="segmentation", wrap=True)
    assert plots.metric_label("cka_last").startswith("last-block CKA")
    with pytest.raises(KeyError, match="METRIC_LABELS"):
        plots.metric_label("cka_first")
    with pytest.raises(SimoError, match="convention"):
        plots.metric_label("delta_mtl", convention="absolute")


def _lab(color: str) -> np.ndarray:
    """CIE L*a*b* (D65) of a matplotlib colour: distances there follow what the eye sees."""
    rgb = np.array(to_rgb(color))
    rgb = np.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722],
                    [0.0193, 0.1192, 0.9505]]) @ rgb / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def _close(a: str, b: str) -> bool:
    """ΔE < 40: orange / vermilion, blue / light blue, purple / pink, orange / brown, grey / ..."""
    return float(np.linalg.norm(_lab(a) - _lab(b))) < 40


def test_close_colours_of_the_palette_are_the_ones_the_reviewer_saw():
    c = dict(zip(["blue", "orange", "green", "vermilion", "purple"], plots.PALETTE))
    assert _close(c["orange"], c["vermilion"]) and not _close(c["blue"], c["green"])


# the sets of names that one figure shows together
FIGURE_SETS = {
    "tasks": ALL_TASKS,
    "merges and realignments": ["joint_mtl", "task_arithmetic", "task_arithmetic+head",
                                "task_arithmetic+repr", "ties", "ties+head", "ties+repr"],
    "merge methods": ["weight_average", "task_arithmetic", "ties", "dare", "tall_mask", "consensus",
                      "lines", "fisher"],
    "starting points": ["foundation", "weak", "scratch"],
    "previews": ["adamw", "ivon", "isotropic", "adamw_sg", "ivon_hess", "multi_ivon_hess"],
}


@pytest.mark.parametrize("group", FIGURE_SETS)
def test_styles_in_one_figure_never_differ_by_a_close_colour_alone(group):
    styles = {n: plots.style(n) for n in FIGURE_SETS[group]}
    for (a, sa), (b, sb) in itertools.combinations(styles.items(), 2):
        assert sa["color"] != sb["color"], (a, b)
        if _close(sa["color"], sb["color"]):  # e.g. orange / vermilion, blue / light blue
            assert sa["marker"] != sb["marker"] and sa["linestyle"] != sb["linestyle"], (a, b)
    assert plots.style("joint MTL") == plots.style("joint_mtl")  # a display key finds its style
    assert plots.style("ties", "bar") == {"color": styles.get("ties", plots.style("ties"))["color"],
                                          "label": "TIES"}
    assert plots.style("depth", "points")["linestyle"] == "none"
    assert plots.display_name("task_arithmetic+repr") == "task arithmetic + repr. realign."
    with pytest.raises(KeyError):
        plots.style("no_such_method")


def test_heatmap_greys_the_diagonal_scales_to_off_diagonal_values_and_has_a_colorbar():
    names = ["a", "b", "c"]
    m = {a: {b: (1.0 if a == b else 0.1 * (i - j)) for j, b in enumerate(names)}
         for i, a in enumerate(names)}
    fig, ax = plt.subplots()
    cb = plots.heatmap(ax, m, names, "cosine", diagonal="grey", cbar_label="cosine")
    assert cb is not None and len(fig.axes) == 2 and "cosine" in cb.ax.get_ylabel()
    assert ax.images[0].get_clim() == pytest.approx((-0.2, 0.2))  # not washed out by the 1s
    assert [t.get_text() for t in ax.texts].count("1.00") == 3  # the diagonal is still written
    fig2, ax2 = plt.subplots()
    plots.heatmap(ax2, m, names, "t", diagonal="mask", colorbar=False)
    assert len(fig2.axes) == 1 and "1.00" not in [t.get_text() for t in ax2.texts]
    fig3, ax3 = plt.subplots()
    plots.heatmap(ax3, m, names, "t")  # the old look: the diagonal sets the scale
    assert ax3.images[0].get_clim() == pytest.approx((-1.0, 1.0))
    plt.close("all")


def _log_axis_labels(span, figsize):
    """The visible major tick labels of ``plots.log_axis`` over ``span`` (and the minor ones)."""
    fig, ax = plt.subplots(figsize=figsize)
    ax.plot(span, [0, 1])
    plots.log_axis(ax, "x")
    fig.canvas.draw()
    lo, hi = ax.get_xlim()
    shown = [t for t in ax.get_xticklabels() if t.get_text() and lo <= t.get_position()[0] <= hi]
    minor = [t.get_text() for t in ax.get_xticklabels(minor=True)]
    plt.close(fig)
    return shown, minor


def test_log_axis_labels_plain_numbers_without_minor_labels():
    shown, minor = _log_axis_labels([200, 1000], (4, 3))
    texts = {t.get_text() for t in shown}
    assert {"200", "500", "1k"} <= texts and not any("10^" in s or "times" in s for s in texts)
    assert all(t == "" for t in minor)


def test_log_axis_labels_do_not_overlap_on_a_narrow_panel():
    """03's efficiency panel: 15 to 2500 steps on a third of a figure."""
    shown, _ = _log_axis_labels([15, 2500], (2.4, 3))
    boxes = sorted((t.get_window_extent() for t in shown), key=lambda b: b.x0)
    assert len(boxes) >= 3
    assert all(a.x1 < b.x0 for a, b in zip(boxes, boxes[1:])), "tick labels overlap"


def test_block_numbers_are_integers_from_one():
    fig, ax = plt.subplots()
    ax.plot([1, 2, 3, 4], [0, 1, 0, 1])
    plots.block_axis(ax, 4)
    assert list(ax.get_xticks()) == [1, 2, 3, 4] and ax.get_xlabel() == "block"
    assert plots.block_name("block 0") == "block 1" and plots.block_name("other") == "other"
    plt.close(fig)


def test_reference_line_gets_headroom_and_a_label():
    fig, ax = plt.subplots()
    ax.bar([0, 1], [-40, -20])
    ax.set_ylim(-42, 0)
    plots.reference_line(ax, -0.5, "ceiling")
    assert ax.get_ylim()[1] > 2  # the line no longer sits on the top edge
    assert any(t.get_text() == "ceiling" for t in ax.texts)
    plt.close(fig)


def test_label_points_merges_coincident_points_and_keeps_labels_apart():
    fig, ax = plt.subplots(figsize=(4, 3))
    xs, ys = [0.9, 0.9, 0.91, 0.92, 0.93, 0.5], [8.0, 8.0, 8.05, 8.1, 7.9, 5.0]
    ax.scatter(xs, ys)
    texts = plots.label_points(ax, xs, ys, ["width: 64", "depth: 4", "a", "b", "c", "far"])
    assert len(texts) == 5 and "width: 64 / depth: 4" in [t.get_text() for t in texts]
    fig.canvas.draw()
    renderer, boxes = fig.canvas.get_renderer(), []
    for t in texts:  # the text's own box, without its leader line
        t.update_positions(renderer)
        boxes.append(Text.get_window_extent(t, renderer))
    assert not any(a.overlaps(b) for a, b in itertools.combinations(boxes, 2))
    frame = ax.get_window_extent(renderer)
    assert all(frame.x0 <= b.x0 and b.x1 <= frame.x1 and frame.y0 <= b.y0 and b.y1 <= frame.y1
               for b in boxes)  # inside the axes: never under the legend or the next panel
    plt.close(fig)


def test_seed_points_band_and_progress_curve():
    fig, ax = plt.subplots()
    plots.seed_points(ax, [0, 1], [[1.0, 2.0, 3.0], [4.0]], "k")
    assert len(ax.collections[0].get_offsets()) == 4
    plots.mean_band(ax, [0, 1, 2], [[1, 2, 3], [3, 4, 5]], plots.style("ivon_hess"))
    assert list(ax.lines[-1].get_ydata()) == [2, 3, 4]
    plots.mean_band(ax, [0, 1], [[1, 2], [3, 6]], plots.style("adamw_sg"), curve=False, shift=0.1)
    assert list(ax.containers[-1].lines[0].get_xdata()) == [0.1, 1.1]  # 3+ tasks: points and bars
    plt.close(fig)
    depth = simo_tasks.get_task("depth")
    hist = [{"step": s, "val": {"depth": {"abs_err": v, "rel_err": v}}}
            for s, v in ((10, 2.0), (20, 1.0))]
    x, y = plots.progress_curve(hist, [depth])
    assert list(x) == [0.5, 1.0] and list(y) == [0.5, 1.0]  # lower is better: final / value


def test_live_preview_draws_one_labelled_panel_per_task():
    alphas = [(0.0, 1.0), (0.5, 0.5), (1.0, 0.0)]
    curve = {"depth": [50.0, 90.0, 100.0], "normals": [100.0, 95.0, 60.0]}
    live = {h: {"depth": [80.0], "normals": [85.0]} for h in ("original", "realigned")}
    fig = plots.live_preview(["depth", "normals"], alphas, curve, curve, [0.5, 0.5], live, "ivon_hess")
    assert len(fig.axes) == 2 and "higher is better" in fig.axes[0].get_ylabel()
    assert fig.axes[1].get_xlabel() == "weight α_normals"
    plt.close(fig)
