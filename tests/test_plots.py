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
