"""Every notebook executes end to end on the smoke profile (papermill, fresh cache).

This is the fourth test layer: it is what `make figures` does, at CI scale. Notebooks share one
temporary cache so later notebooks reuse earlier artifacts, as in a real batch run.
"""
from __future__ import annotations

import json
import os

import pytest

from real_fixtures import write_nyuv2
from simo import paths, runner
from simo.config import load_profile, setting


@pytest.fixture(scope="module")
def nb_cache(tmp_path_factory):
    d = tmp_path_factory.mktemp("nbcache")
    mp = pytest.MonkeyPatch()
    mp.setenv("SIMO_CACHE", str(d))  # inherited by the papermill kernels
    yield d
    mp.undo()


@pytest.mark.parametrize("notebook", list(runner.NOTEBOOKS))
def test_notebook_runs_on_smoke(notebook, nb_cache, tmp_path):
    rec = runner.run_notebook(notebook, "smoke", out_dir=tmp_path)
    assert rec.status == "ok", rec.error
    results = json.loads((paths.figures_dir("smoke", notebook) / "results.json").read_text())
    assert results["meta"]["profile"] == "smoke"
    pngs = list(paths.figures_dir("smoke", notebook).glob("*.png"))
    assert pngs, "the notebook saved no figure"


def test_results_contract_of_01(nb_cache, tmp_path):
    """01's results.json has pretrained and scratch metrics for every task (issue contract)."""
    rec = runner.run_notebook("01_pretrain_and_finetune", "smoke", out_dir=tmp_path)
    assert rec.status == "ok", rec.error
    res = json.loads((paths.figures_dir("smoke", "01_pretrain_and_finetune") / "results.json")
                     .read_text())
    for task, main in res["main_metric"].items():
        for init in ("pretrained", "scratch", "weak"):
            assert main in res["tasks"][task][init]
    # issue 20's contract: the foundation evidence
    f = res["foundation"]
    assert {"weights_sha256", "objective", "tasks"} <= set(f)
    assert set(f["tasks"]) == set(res["main_metric"])
    for row in f["tasks"].values():
        for key in ("gain_vs_scratch_pct", "gain_vs_weak_pct"):
            lo, hi = row[key]["ci95"]
            assert lo <= row[key]["mean"] <= hi
        assert isinstance(row["steps_to_95pct"], int) and row["probe_points"] >= 0
        assert row["tv_norm_ratio"] > 0


def test_results_contract_of_03(nb_cache, tmp_path):
    """03's results.json: Δ_MTL mean/CI/seeds, steps and samples per method (issue contract)."""
    rec = runner.run_notebook("03_realignment", "smoke", out_dir=tmp_path)
    assert rec.status == "ok", rec.error
    res = json.loads((paths.figures_dir("smoke", "03_realignment") / "results.json").read_text())
    keys = {"joint_mtl", "task_arithmetic", "ties", "task_arithmetic+head", "task_arithmetic+repr",
            "ties+head", "ties+repr"}
    seeds = res["seeds"]
    assert len(seeds) >= 2
    for table in ("delta_mtl", "delta_mtl_original_lambda"):
        assert keys <= set(res[table])
        for v in res[table].values():
            lo, hi = v["ci95"]
            assert lo <= v["mean"] <= hi and len(v["seeds"]) == len(seeds)
    assert keys <= set(res["steps"]) and keys <= set(res["samples"])
    assert res["steps"]["task_arithmetic"] == 0 and res["steps"]["joint_mtl"] > 0
    assert res["steps"]["task_arithmetic+repr"] > 0 and res["steps"]["task_arithmetic+head"] > 0


def test_results_contract_of_05(nb_cache, tmp_path):
    """05's results.json: MAE/Spearman per method and task, regret, hypervolume gap, cost ratio,
    with both readings (realigned and original heads), for the four methods (issue contract)."""
    res_path = paths.figures_dir("smoke", "05_previews") / "results.json"
    if not res_path.exists():
        rec = runner.run_notebook("05_previews", "smoke", out_dir=tmp_path)
        assert rec.status == "ok", rec.error
    res = json.loads(res_path.read_text())
    methods = {"isotropic", "adamw_sg", "ivon_hess", "multi_ivon_hess"}
    for table in ("quality", "quality_original_heads"):
        assert set(res[table]) == methods
        for per_task in res[table].values():
            assert set(per_task) == set(res["tasks"])
            assert all(q["mae"] >= 0 and "spearman" in q for q in per_task.values())
    for table in ("regret", "regret_original_heads", "hypervolume_gap", "cost_ratio"):
        assert set(res[table]) == methods
    assert all(r >= 0 for r in res["regret"].values())
    assert all(0 < c for c in res["cost_ratio"].values())
    # the sensitivity sweep passes through the default, whose regret is the main grid's (seed 0)
    prof = load_profile("smoke")
    assert set(res["sensitivity"]) == {k.name for k in prof.previews.sensitivity}
    for sw in res["sensitivity"].values():
        assert len(sw["values"]) == len(sw["regret"]) == len(sw["pick"]) == len(sw["mae"]) >= 2
        at_default = sw["regret"][sw["values"].index(setting(prof, sw["key"]))]
        assert at_default == pytest.approx(res["regret_seeds"]["realigned"]["ivon_hess"][0])


def test_unknown_parameter_is_one_line_error(tmp_path):
    from simo.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown parameter 'lamda'.*valid: profile"):
        runner.run_notebook("00_data_and_tasks", "smoke", {"lamda": 1}, out_dir=tmp_path)


def test_failing_notebook_names_cell_and_error(nb_cache, tmp_path):
    rec = runner.run_notebook("00_data_and_tasks", "smoke", {"dataset": "nyuv2"}, out_dir=tmp_path)
    assert rec.status == "failed"
    assert "DataError" in rec.error and "data_root" in rec.error and "\n" not in rec.error


def test_same_profile_and_seed_give_identical_results(nb_cache, tmp_path, monkeypatch):
    """Determinism: 01 rerun from an empty cache writes byte-identical results.json."""
    res = paths.figures_dir("smoke", "01_pretrain_and_finetune") / "results.json"
    if not res.exists():
        assert runner.run_notebook("01_pretrain_and_finetune", "smoke", out_dir=tmp_path).status == "ok"
    first = res.read_text()
    monkeypatch.setenv("SIMO_CACHE", str(tmp_path / "fresh-cache"))
    rec = runner.run_notebook("01_pretrain_and_finetune", "smoke", out_dir=tmp_path)
    assert rec.status == "ok", rec.error
    assert res.read_text() == first


@pytest.fixture
def nb_env(tmp_path, monkeypatch):
    """A fresh cache for the papermill kernel, which must import this checkout's ``simo``."""
    monkeypatch.setenv("SIMO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [
        str(paths.ROOT), os.environ.get("PYTHONPATH")])))
    return tmp_path


def test_notebook_02_runs_on_the_nyuv2_fixture(nb_env):
    """Notebook 02 end to end on smoke against MTAN-layout NYUv2, encoder from a weights file."""
    from simo.cache import save_tensors
    from simo.models import build_encoder

    root = write_nyuv2(nb_env / "data", n_train=12, n_val=10)
    smoke = load_profile("smoke")
    weights = nb_env / "encoder.safetensors"
    encoder = build_encoder(smoke.model, smoke.data.image_size, seed=5)
    save_tensors(weights, encoder.vit.state_dict())
    overrides = {"model.weights": str(weights), "realign.n_samples": 8, "realign.head_steps": 2,
                 "finetune.scales": [1.0, 1.5], "finetune.steps": 4, "finetune.eval_every": 4,
                 "merging.lam_grid": [0.5, 1.0]}  # fewer steps and merges: seconds, not a minute
    rec = runner.run_notebook("02_misalignment", "smoke", {
        "dataset": "nyuv2", "data_root": str(root), "overrides": overrides,
        "methods": ["task_arithmetic", "weight_average"], "ada_steps": 2},
        out_dir=nb_env / "build")
    assert rec.status == "ok", rec.error
    assert "runs" in rec.figures_dir.parts  # non-default parameters never write the gallery
    res = json.loads((rec.figures_dir / "results.json").read_text())
    assert set(res["single_task_test"]) == {"segmentation", "depth", "normals"}
    assert set(res["lambda"]["original_heads"]) == {"task_arithmetic", "weight_average"}
    assert (nb_env / "cache" / "weights").is_dir()  # the encoder came from the weights file
    assert not (nb_env / "cache" / "pretrained").exists()


def test_results_contract_of_06(nb_cache, tmp_path):
    """06's results.json: per knob a list of points with value, gap, its CI and Δ_MTL per method;
    the best regime (issue contract)."""
    res_path = paths.figures_dir("smoke", "06_regimes") / "results.json"
    if not res_path.exists():
        rec = runner.run_notebook("06_regimes", "smoke", out_dir=tmp_path)
        assert rec.status == "ok", rec.error
    res = json.loads(res_path.read_text())
    knobs = load_profile("smoke").regime.knobs
    assert set(res["sweeps"]) == {k.name for k in knobs}
    for k in knobs:
        points = res["sweeps"][k.name]
        assert [p["value"] for p in points] == [list(v) if isinstance(v, tuple) else v
                                                for v in k.values]
        for p in points:
            lo, hi = p["gap_ci95"]
            assert lo <= p["gap"] <= hi and len(p["gap_seeds"]) == len(res["seeds"]) >= 2
            assert {"joint_mtl", "task_arithmetic+repr", "ties+head"} <= set(p["delta_mtl"])
            best = max((m for m in p["delta_mtl"] if "+" in m), key=p["delta_mtl"].get)
            assert p["gap"] == pytest.approx(p["delta_mtl"]["joint_mtl"] - p["delta_mtl"][best])
    assert {"knob", "value", "gap", "holds"} <= set(res["best_regime"])
