"""Every notebook executes end to end on the smoke profile (papermill, fresh cache).

This is the fourth test layer: it is what `python -m simo figures -o jobs.workers 2` does, at CI
scale. Each notebook runs once per session (the ``smoke_run`` fixture, in conftest): its check here
and its results contract read what that execution wrote. Notebooks share one temporary cache, so
later notebooks reuse earlier artifacts, as in a batch run.
"""
from __future__ import annotations

import json
import os

import nbformat
import pytest

from conftest import SMOKE_PARAMS
from real_fixtures import write_nyuv2
from simo import paths, runner
from simo.config import KnobPoint, load_profile, setting


@pytest.mark.parametrize("notebook", list(runner.NOTEBOOKS))
def test_notebook_runs_on_smoke(notebook, smoke_run):
    run = smoke_run(notebook)
    assert run.record.status == "ok", run.record.error
    assert run.record.figures_dir == paths.figures_dir("smoke", notebook)
    assert run.results["meta"]["profile"] == "smoke"
    assert list(run.figures.glob("*.png")), "the notebook saved no figure"
    cells = nbformat.read(run.notebook, as_version=4).cells
    errors = [o for c in cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors and all(c.get("execution_count") for c in cells
                              if c.cell_type == "code" and c.source.strip()), "a cell did not run"


CODE_LINES = {"03_realignment": 150, "05_previews": 150}  # the two notebooks with the most protocol


@pytest.mark.parametrize("notebook", list(runner.NOTEBOOKS))
def test_notebook_holds_calls_and_plots_not_library_code(notebook):
    """No ``def``, no code cell over 25 lines, 03 and 05 at most 150 code lines (comments and
    blank lines aside): what a notebook computes lives in ``simo`` where it is tested."""
    cells = nbformat.read(paths.NOTEBOOKS / f"{notebook}.ipynb", as_version=4).cells
    code = [[ln for ln in c.source.splitlines() if ln.strip() and not ln.strip().startswith("#")]
            for c in cells if c.cell_type == "code"]
    assert not [ln for lines in code for ln in lines if ln.lstrip().startswith(("def ", "class "))]
    assert max(map(len, code)) <= 25, f"a code cell of {max(map(len, code))} lines"
    assert sum(map(len, code)) <= CODE_LINES.get(notebook, 10**6)


def test_results_contract_of_01(smoke_run):
    """01's results.json has pretrained and scratch metrics for every task (issue contract)."""
    run = smoke_run("01_pretrain_and_finetune")
    assert run.record.status == "ok", run.record.error
    res = run.results
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


def test_results_contract_of_03(smoke_run):
    """03's results.json: Δ_MTL mean/CI/seeds, steps and samples per method (issue contract)."""
    run = smoke_run("03_realignment")
    assert run.record.status == "ok", run.record.error
    res = run.results
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


def test_results_contract_of_05(smoke_run):
    """05's results.json: MAE/Spearman per method and task, regret, hypervolume gap, cost ratio,
    with both readings (realigned and original heads), for the four methods (issue contract)."""
    run = smoke_run("05_previews")
    assert run.record.status == "ok", run.record.error
    res = run.results
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


def test_failing_notebook_names_cell_and_error(tmp_cache, tmp_path):
    rec = runner.run_notebook("00_data_and_tasks", "smoke", {"dataset": "nyuv2"}, out_dir=tmp_path)
    assert rec.status == "failed"
    assert "DataError" in rec.error and "data_root" in rec.error and "\n" not in rec.error


def test_same_profile_and_seed_give_identical_results(smoke_run, tmp_path, monkeypatch):
    """Determinism: 01 rerun from an empty cache writes byte-identical results.json to this
    session's run (pretraining, finetuning and every evaluation computed twice)."""
    first = smoke_run("01_pretrain_and_finetune")
    assert first.record.status == "ok", first.record.error
    monkeypatch.setenv("SIMO_CACHE", str(tmp_path / "fresh-cache"))
    rec = runner.run_notebook("01_pretrain_and_finetune", "smoke", SMOKE_PARAMS, out_dir=tmp_path,
                              progress=False)
    assert rec.status == "ok", rec.error
    assert (tmp_path / "fresh-cache" / "pretrained").is_dir()  # the kernel pretrained anew
    assert (rec.figures_dir / "results.json").read_text() == first.results_text


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


def test_results_contract_of_06(smoke_run):
    """06's results.json: per knob a list of points with value, gap, its CI and Δ_MTL per method;
    the best regime (issue contract)."""
    run = smoke_run("06_regimes")
    assert run.record.status == "ok", run.record.error
    res = run.results
    knobs = load_profile("smoke").regime.knobs
    assert set(res["sweeps"]) == {k.name for k in knobs}
    for k in knobs:
        points = res["sweeps"][k.name]
        assert [p["value"] for p in points] == [
            list(v) if isinstance(v, tuple) else v.label if isinstance(v, KnobPoint) else v
            for v in k.values]
        for p in points:
            lo, hi = p["gap_ci95"]
            assert lo <= p["gap"] <= hi and len(p["gap_seeds"]) == len(res["seeds"]) >= 2
            assert {"joint_mtl", "task_arithmetic+repr", "ties+head"} <= set(p["delta_mtl"])
            best = max((m for m in p["delta_mtl"] if "+" in m), key=p["delta_mtl"].get)
            assert p["gap"] == pytest.approx(p["delta_mtl"]["joint_mtl"] - p["delta_mtl"][best])
            assert p["measures"]["probe"] == p["measures"]["probe"]  # every point has its probe
    assert {"knob", "value", "gap", "holds"} <= set(res["best_regime"])
    base = res["at_base"]  # the profile's own setting, named by its θ0, with its CI
    lo, hi = base["ci95"]
    assert lo <= base["gap"] <= hi and base["encoder"] == res["base"]["encoder"]
