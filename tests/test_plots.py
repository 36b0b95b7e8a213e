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
    png = plots.save_figure(fig, "zz_provenance_test", "line")
    meta = json.loads(Image.open(png).text["Description"])
    assert meta["profile"] == "smoke" and meta["seed"] == 3
    assert {"git_commit", "device", "versions"} <= set(meta) and "torch" in meta["versions"]
    res = json.loads(plots.save_results("zz_provenance_test", {"x": 1 / 3}).read_text())
    assert res["x"] == 0.333333 and res["meta"] == meta
    assert png.parent == paths.figures_dir("smoke", "zz_provenance_test")
