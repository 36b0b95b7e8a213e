"""The regime study's bookkeeping: points from knobs, shared runs, the claim, the summary."""
from __future__ import annotations

import math

import numpy as np
import pytest

from simo import regimes, runner
from simo.config import load_profile
from simo.errors import ConfigError
from simo.steps import finetuned

KNOBS = [{"name": "pretraining", "key": "pretrain.steps", "values": [0, 10]},
         {"name": "tasks", "key": "tasks", "values": [["segmentation", "depth"],
                                                      ["depth", "normals"]]},
         {"name": "lr", "key": "finetune.lr", "values": [1e-3, 2e-3]},
         {"name": "samples", "key": "realign.n_samples", "values": [16, 32]}]


@pytest.fixture
def prof():
    return load_profile("smoke", {"tasks": ["segmentation", "depth"], "pretrain.steps": 10,
                                  "finetune.lr": 1e-3, "realign.n_samples": 32,
                                  "regime.knobs": KNOBS})


def test_points_apply_one_knob_at_a_time(prof):
    pts = regimes.points(prof)
    assert [(p.knob, p.label) for p in pts][:3] == [("pretraining", "0"), ("pretraining", "10"),
                                                    ("tasks", "segmentation+depth")]
    for p in pts:
        moved = {"pretraining": p.profile.pretrain.steps, "tasks": p.profile.tasks,
                 "lr": p.profile.finetune.lr, "samples": p.profile.realign.n_samples}
        base = {"pretraining": 10, "tasks": ("segmentation", "depth"), "lr": 1e-3, "samples": 32}
        assert {k: v for k, v in moved.items() if k != p.knob} == {
            k: v for k, v in base.items() if k != p.knob}
    # the profile's own setting appears under every knob: one profile, shared by all of them
    assert len({p.profile for p in pts}) == 1 + 4
    assert [p.knob for p in regimes.points(prof, ["lr"])] == ["lr", "lr"]


def test_points_errors_name_what_to_fix(prof):
    with pytest.raises(ConfigError, match="unknown regime knob 'width'; choose one of: pretraining"):
        regimes.points(prof, ["width"])
    with pytest.raises(ConfigError, match="profile 'tiny' defines no regime.knobs.*'regime'"):
        regimes.points(load_profile("tiny"))
    bad = load_profile("smoke", {"regime.knobs": [{"name": "t", "key": "tasks",
                                                   "values": [["depth", "nrmals"]]}]})
    with pytest.raises(ConfigError, match="regime knob 't', value .*unknown task 'nrmals'"):
        regimes.points(bad)


def test_training_jobs_run_each_distinct_run_once(prof):
    pts = regimes.points(prof)
    pre, runs = regimes.training_jobs(pts, [0, 1])
    assert len(pre) == 2  # pretraining 0 and 10 steps; the other knobs reuse 10
    names = [(j.args[1], j.keywords["seed"], j.args[0].pretrain.steps, j.args[0].finetune.lr)
             for j in runs]
    assert len(names) == len(set(map(str, names)))
    # per seed: base (2 single + 1 joint), pretraining 0 (2 + 1), depth+normals (normals + 1
    # joint; depth is shared with the base), lr 2e-3 (2 + 1); realignment samples train nothing
    assert len(runs) == 2 * (3 + 3 + 2 + 3)
    joint = [j for j in runs if isinstance(j.args[1], list)]
    assert runs[:len(joint)] == joint  # the longest runs first


def test_claim_needs_all_three_conditions():
    cost = {"joint_mtl": {"steps": 1200, "samples": 600},
            "m": {"steps": 200, "samples": 150}, "slow": {"steps": 201, "samples": 150}}
    delta = {"joint_mtl": 5.0, "m": 2.0, "slow": 4.0}
    c = regimes.claim_holds(delta, cost, "m")
    assert c == {"gap": 3.0, "steps_ratio": 6.0, "samples_ratio": 4.0, "holds": True}
    assert not regimes.claim_holds(delta, cost, "slow")["holds"]  # 1200/201 < 6
    assert not regimes.claim_holds({**delta, "m": 1.9}, cost, "m")["holds"]  # 3.1 points behind


def _record(gaps, tv):
    mtl = [5.0 + i for i in range(len(gaps))]
    return {"delta_mtl": {"joint_mtl": mtl, "a+head": [m - g for m, g in zip(mtl, gaps)],
                          "a+repr": [m - g - 1 for m, g in zip(mtl, gaps)], "a": [-30.0] * len(gaps)},
            "gap": list(gaps), "best": "a+head",
            "cost": {"joint_mtl": {"steps": 1200, "samples": 600}, "a+head": {"steps": 100,
                                                                              "samples": 100},
                     "a+repr": {"steps": 100, "samples": 100}},
            "measures": {"tv_norm": [tv] * len(gaps), "probe": [-tv] * len(gaps)},
            "lambda": {}, "plateau_gain": {"single": 0.0, "joint_mtl": 0.0}}


def test_summary_correlations_and_best_regime(prof):
    pts = regimes.points(prof, ["pretraining", "lr"])
    recs = [_record([10, 12], 0.1), _record([6, 8], 0.05), _record([6, 8], 0.05),
            _record([2, 3], 0.01)]
    sweeps = regimes.summarize(pts, recs)
    assert list(sweeps) == ["pretraining", "lr"]
    e = sweeps["pretraining"][0]
    assert e["value"] == 0 and e["gap"] == 11 and e["gap_ci95"][0] < 11 < e["gap_ci95"][1]
    assert e["best_method"] == "a+head" and e["delta_mtl"]["joint_mtl"] == 5.5
    assert e["claim"]["gap"] == pytest.approx(11) and e["claim"]["steps_ratio"] == 12
    # the shared base point (gap 7, tv 0.05) counts once: three distinct settings
    corr = regimes.correlations(sweeps)
    assert corr["tv_norm"] == pytest.approx(np.corrcoef([0.1, 0.05, 0.01], [11, 7, 2.5])[0, 1])
    assert corr["probe"] == pytest.approx(-corr["tv_norm"])
    best = regimes.best_regime(sweeps)
    assert (best["knob"], best["label"], best["holds"]) == ("lr", "0.002", True)
    assert best["within_cost"] and best["any_holds"]


def test_pearson_of_a_constant_is_nan():
    assert math.isnan(regimes._pearson([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))


def test_whole_study_runs_skip_the_regime_notebook_where_no_knobs(monkeypatch):
    seen = []
    monkeypatch.setattr(runner, "run_notebook", lambda nb, *a, **k: seen.append(nb) or
                        runner.RunRecord(nb, "ok", 0.0, 0))
    runner.run_all("tiny")
    assert "06_regimes" not in seen and "05_previews" in seen
    seen.clear()
    runner.run_all("tiny", only=["06"])  # asked for by name: it runs (and says what is missing)
    assert seen == ["06_regimes"]


def test_measure_on_a_small_study(prof, tmp_path, monkeypatch):
    """End to end on two points: Δ_MTL per seed, the gap against the best realigned method."""
    monkeypatch.setenv("SIMO_CACHE", str(tmp_path))
    pts = regimes.points(prof, ["samples"])
    regimes.prefetch(pts, [0])
    rec = regimes.measure(pts[0], [0], n_images=16)
    d = rec["delta_mtl"]
    assert set(d) == {"joint_mtl", "task_arithmetic", "ties", "task_arithmetic+head",
                      "task_arithmetic+repr", "ties+head", "ties+repr"}
    best = max((k for k in d if "+" in k), key=lambda k: d[k][0])
    assert rec["best"] == best and rec["gap"][0] == pytest.approx(d["joint_mtl"][0] - d[best][0])
    assert 0 < rec["measures"]["cka_last"][0] <= 1 + 1e-6 and rec["measures"]["tv_norm"][0] > 0
    assert rec["cost"]["task_arithmetic+head"]["samples"] <= 16
    mtl = finetuned(pts[0].profile, list(pts[0].profile.tasks), seed=0)
    assert rec["cost"]["joint_mtl"]["steps"] == mtl.meta["steps"]
    assert regimes.training_seconds(pts, [0]) > 0


@pytest.mark.parametrize("curve", [{0.0: 1, 0.2: 5, 0.4: 3}, {0.8: 9, 1.0: 9}, {1.0: 9}, {0.0: 9}])
def test_second_round_is_what_the_search_scores_next(prof, monkeypatch, curve):
    """The batch prefetched after the first round holds exactly the search's second round."""
    from simo import analysis

    score = lambda lam: curve.get(round(lam, 3), 0.0) - 0.01 * lam  # noqa: E731
    monkeypatch.setattr(regimes, "_score", lambda setup, metrics: score(metrics))
    setup = type("S", (), {"profile": load_profile("smoke", {"merging.lam_grid": [
        0.0, 0.2, 0.4, 0.6, 0.8, 1.0], "realign.select_stride": 2}),
        "realigned": lambda self, m, lam, split: lam})()
    grid, stride = setup.profile.merging.lam_grid, setup.profile.realign.select_stride
    rounds = []
    analysis.select_on_validation(score, grid, stride, prefetch=rounds.append)
    assert regimes._second_round(setup, "task_arithmetic") == (rounds[1] if len(rounds) > 1 else [])
