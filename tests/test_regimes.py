"""The regime study's bookkeeping: points from knobs, shared runs, the claim, the summary."""
from __future__ import annotations

import math

import numpy as np
import pytest

from simo import protocol, regimes, runner
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


def test_the_claim_is_the_protocols():
    """One definition of the paper's claim: the study reads the protocol's."""
    assert regimes.claim_holds is protocol.claim_holds
    assert regimes.PAPER_CLAIM is protocol.PAPER_CLAIM


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
    recs = regimes.measure(pts, [0], n_images=16)
    assert len(recs) == 2 and recs[0] is not recs[1]  # two settings (16 and 32 samples)
    rec = recs[0]
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
    assert rec["lambda"]["task_arithmetic (realigned)"] in prof.merging.lam_grid
    # the study's λ is the protocol's: searched on the first seed, ties to the smaller λ
    study = protocol.run([protocol.plan(pts[0].profile, [0], ["task_arithmetic"])])[0]
    assert rec["lambda"]["task_arithmetic (realigned)"] == study.lam["realigned_lambda"][
        "task_arithmetic", 0]
    assert rec["delta_mtl"]["task_arithmetic+repr"] == [study.delta("task_arithmetic+repr", 0)]


def test_facts_read_the_study_back(prof):
    pts = regimes.points(prof, ["pretraining", "lr"])
    recs = [_record([10, 12], 0.1), _record([6, 8], 0.05), _record([6, 8], 0.05),
            _record([2, 3], 0.01)]
    recs[1] = {**recs[1], "plateau_gain": {"single": 0.01, "joint_mtl": 0.05}}
    sweeps = regimes.summarize(pts, recs)
    corr = regimes.correlations(sweeps)
    results = {"sweeps": sweeps, "correlations": corr, "most_predictive": "tv_norm",
               "gap_sources": regimes.gap_sources(sweeps),
               "best_regime": regimes.best_regime(sweeps),
               "at_base": regimes.at_base(prof, pts, sweeps)}
    f = regimes.facts(results)
    assert f["base"].startswith("At the study's own setting (θ0: SimMIM, 10 steps) the gap is "
                                "+7.0 points (95 % CI [")
    assert "seeds +6.0, +8.0; best: a+head), with a probe Δ_MTL of -0.1." in f["base"]
    # the knob that moves the probe most is the pretraining one (-0.1 -> -0.05; lr: -0.05 -> -0.01)
    assert f["probe"] == ("Along pretraining, the probe (Δ_MTL of θ0 with realigned heads) goes "
                          "-0.1, -0.1 and the gap +11.0, +7.0 (0, 10).")
    assert f["range"].startswith("from +2.5 points (lr = 0.002, best: a+head) to +11.0 "
                                 "(pretraining = 0)")
    assert f["trends"] == ["pretraining: from 0 to 10 the gap falls (realignment catches up) "
                           "(+11.0, +7.0).", "lr: from 0.001 to 0.002 the gap falls (realignment "
                           "catches up) (+7.0, +2.5)."]
    assert f["settings"] == 3 and f["top_r"] == corr["tv_norm"] and f["weak"] == ""
    assert f["others"] == f"probe {corr['probe']:+.2f}"
    assert f["plateau"].startswith("5.0% (joint_mtl at pretraining = 10; single-task runs at most "
                                   "1.0%): not every baseline has flattened, but a joint MTL")
    assert f["claim"].startswith("The paper's claim holds at lr = 0.002: a+head is +2.5 points")


def test_at_base_reads_the_profiles_own_point(prof):
    pts = regimes.points(prof, ["pretraining", "lr"])
    recs = [_record([10, 12], 0.1), _record([6, 8], 0.05), _record([6, 8], 0.05),
            _record([2, 3], 0.01)]
    sweeps = regimes.summarize(pts, recs)
    base = regimes.at_base(prof, pts, sweeps)
    assert (base["knob"], base["label"], base["gap"], base["seeds"]) == ("pretraining", "10", 7,
                                                                         [6, 8])
    assert base["ci95"][0] < 7 < base["ci95"][1] and base["probe"] == -0.05
    assert base["encoder"] == "SimMIM, 10 steps"
    with pytest.raises(ConfigError, match="no knob of profile 'smoke' keeps its own setting"):
        regimes.at_base(prof, pts[:1], sweeps)  # only pretraining = 0: the base is not measured


POINT_KNOBS = [{"name": "pretraining", "values": [
    {"label": "random", "set": {"pretrain.steps": 0}},
    {"label": "short", "set": {"pretrain.steps": 5, "pretrain.lr": 1e-4}},
    {"label": "own", "set": {}}]},
    {"name": "lr", "key": "finetune.lr", "values": [1e-3, 2e-3]}]


def test_a_knob_value_may_move_several_settings():
    prof = load_profile("smoke", {"pretrain.steps": 10, "finetune.lr": 1e-3,
                                  "regime.knobs": POINT_KNOBS})
    pts = regimes.points(prof, ["pretraining"])
    assert [p.label for p in pts] == ["random", "short", "own"]
    assert [p.json_value for p in pts] == ["random", "short", "own"]
    short = pts[1].profile
    assert (short.pretrain.steps, short.pretrain.lr, short.finetune.lr) == (5, 1e-4, 1e-3)
    assert pts[2].profile == prof  # {} keeps the profile's own setting
    assert [regimes.encoder_of(p.profile) for p in pts] == ["random", "SimMIM, 5 steps",
                                                            "SimMIM, 10 steps"]
    rows = regimes.knob_rows(prof)
    assert rows[0]["knob"] == "pretraining" and rows[0]["values"] == ["random", "short", "own"]
    assert rows[0]["setting"] == "pretrain.steps, pretrain.lr"
    assert rows[1]["setting"] == "finetune.lr" and rows[1]["values"] == ["0.001", "0.002"]
    assert [r["knob"] for r in regimes.knob_rows(prof, ["lr"])] == ["lr"]
