"""What the protocol's studies say: costs, convergence, the claim, the facts of 02 and 03."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from simo import protocol, verdict
from simo.config import load_profile


def _fake_study(tried: int = 3) -> protocol.Study:
    """Two seeds, one method: costs that differ by seed, a realigned search of ``tried`` values."""
    plan = protocol.Plan(load_profile("smoke"), (0, 1), ("a",), ("a",))
    study = protocol.Study(plan, {}, {"realigned_lambda": {("a", 0): dict.fromkeys(
        range(tried), 0.0)}})
    run = {"head": {"steps": 10, "samples": 32, "seconds": 2.0},
           "repr": {"steps": 20, "samples": 32, "seconds": 5.0}}
    study.mtl = lambda s: SimpleNamespace(meta={"steps": 600 + s, "samples": 96, "seconds": 60.0})
    study.record = lambda key, s, p="realigned_lambda": {k: v * (1 + s) for k, v in
                                                       run[key.split("+")[1]].items()}
    study.single_cost = lambda s: {"steps": 300, "samples": 96, "seconds": 30.0 + s}
    return study


def test_costs_count_the_realignment_alone_and_the_whole_pipeline():
    c = verdict.costs(_fake_study(tried=3))
    assert c["joint_mtl"]["alone"] == c["joint_mtl"]["pipeline"] == {
        "steps": 600.5, "samples": 96.0, "seconds": 60.0}
    assert c["a"]["alone"] == {"steps": 0.0, "samples": 0.0, "seconds": 0.0}
    assert c["a"]["pipeline"] == {"steps": 300.0, "samples": 96.0, "seconds": 30.5}
    # head: itself plus the 2 other values the search tried; repr: plus all 3 of them
    assert c["a+head"]["alone"] == {"steps": 15.0, "samples": 48.0, "seconds": 3.0}
    assert c["a+head"]["pipeline"]["steps"] == 300 + 15 + 2 * 15
    assert c["a+head"]["pipeline"]["seconds"] == pytest.approx(30.5 + 3 + 2 * 3)
    assert c["a+repr"]["pipeline"]["steps"] == 300 + 30 + 3 * 15
    assert c["a+repr"]["pipeline"]["samples"] == 96.0


def _results_02(delta_ta: float, cka: float) -> dict:
    return {"convention": "normalized",
            "lambda": {"original_heads": {"task_arithmetic": 0.4, "weight_average": 1.0},
                       "realigned": {"task_arithmetic": 0.8}},
            "delta_mtl": {"task_arithmetic": delta_ta, "weight_average": -30.0,
                          "task_arithmetic+head_retrain": -2.0},
            "delta_mtl_head_retrain_original_lambda": {"task_arithmetic": -4.0,
                                                       "weight_average": -10.0},
            "delta_mtl_head_retrain_realigned_lambda": {"task_arithmetic": -2.0},
            "head_retrain_ceiling": -1.0,
            "cka": {"depth": [1.0, cka], "normals": [1.0, 0.9]},
            "cosine": {"depth": [1.0, 0.3], "normals": [1.0, 0.5]}}


def test_facts_02_read_the_recovery_and_the_similarities():
    f = verdict.facts_02(_results_02(-20.0, 0.8))
    assert f["recovery"] == ["task_arithmetic: Δ_MTL -20.0 % with the original heads (λ=0.4); "
                             "head realignment recovers 16.0 points with that λ (80% of the loss) "
                             "and 18.0 points with λ re-selected (0.8) (90%)."]
    assert f["cosine_last"] == (0.3, 0.5) and f["lowest"] == "depth" and f["cka_last"] == (0.8, 0.9)
    assert f["reading"].startswith("CKA stays well above cosine")
    assert f["best"] == ("task_arithmetic", -20.0) and f["worst"] == ("weight_average", -30.0)
    g = verdict.facts_02(_results_02(-0.2, 0.55))  # no loss to speak of; CKA near cosine
    assert "lost less than half a point" in g["recovery"][0] and "recovers" not in g["recovery"][0]
    assert g["reading"].startswith("CKA is not clearly above cosine")


def _results_03() -> dict:
    ci = lambda m: {"mean": m, "ci95": [m - 1, m + 1], "seeds": [m, m]}  # noqa: E731
    keys = {"joint_mtl": -5.0, "a": -30.0, "a+head": -9.0, "a+repr": -7.0}
    conv = {"single-task": {"tasks": {"depth": {"gain": 0.004, "steps": [650, 1250],
                                                "converged": True}}, "converged": True},
            "joint MTL": {"tasks": {"depth": {"gain": 0.03, "steps": [900, 1750],
                                              "converged": False}}, "converged": False}}
    return {"delta_mtl": {k: ci(v) for k, v in keys.items()},
            "delta_mtl_original_lambda": {k: ci(v - 1) for k, v in keys.items()},
            "steps": {"joint_mtl": 1200, "a+repr": 100}, "samples": {"joint_mtl": 96, "a+repr": 16},
            "seconds": {"joint_mtl": 60.0, "a+repr": 6.0},
            "pipeline": {"joint_mtl": {"seconds": 60.0}, "a+repr": {"seconds": 90.0}},
            "convergence": conv,
            "tuning": {"adapter_lr": {"a": 0.01}, "val_delta_mtl": {"a+head": -8.0, "a+repr": -8.5},
                       "interior": {"original_lambda": {"a/seed0": True},
                                    "realigned_lambda": {"a/seed0": False}}},
            "claim": {"method": "a+repr", "gap": {"mean": 2.0, "ci95": [1.0, 3.0]},
                      "steps_ratio": 12.0, "samples_ratio": 6.0, "holds": True,
                      "pipeline": {"steps_ratio": 0.5, "samples_ratio": 1.0, "holds": False}}}


def test_facts_03_report_convergence_tuning_each_protocol_and_the_claim():
    res = _results_03()
    f = verdict.facts_03(res, ["a"])
    assert f["mtl"] == -5.0 and not f["converged"]
    assert f["unconverged"] == ["joint MTL depth (+3.0% at 1750 steps)"]
    assert [(r["key"], r["realigned"], r["original"], r["gap"]) for r in f["rows"]] == [
        ("a+head", -9.0, -10.0, -4.0), ("a+repr", -7.0, -8.0, -2.0)]
    assert f["repr_behind_head"] == ["a"] and f["lambda_edges"] == ["a/seed0 (realigned lambda)"]
    c = f["claim"]
    assert (c["method"], c["holds"], c["gap"]["mean"], c["gap_to_mtl"]) == ("a+repr", True, 2.0, -2.0)
    assert (c["steps_ratio"], c["samples_ratio"], c["time_ratio"]) == (12.0, 6.0, 10.0)
    assert f["pipeline_ratio"] == 1.5 and not c["pipeline"]["holds"]
    res["seconds"]["a+repr"] = 0.0  # no division by zero
    assert math.isfinite(verdict.facts_03(res, ["a"])["claim"]["time_ratio"])




def test_costs_count_every_adapter_run_of_the_tuning_searches():
    study = _fake_study(tried=3)
    study.scores["realigned_lambda"][("a+repr", 0)] = dict.fromkeys(range(4), 0.0)  # its λ search
    study.lr_scores["a"] = dict.fromkeys(range(3), 0.0)  # and its lr search
    c = verdict.costs(study)
    # repr: itself, the 3 head runs of the head search, and 4 + 3 - 1 other adapter runs
    assert c["a+repr"]["pipeline"]["steps"] == 300 + 30 + 3 * 15 + 6 * 30
    assert c["a+head"]["pipeline"]["steps"] == 300 + 15 + 2 * 15  # unchanged by the adapters


def test_convergence_compares_each_baseline_with_its_run_at_twice_the_steps(monkeypatch):
    prof = load_profile("smoke", {"tasks": ["segmentation", "depth"]})
    prof = load_profile("smoke", {"tasks": ["segmentation", "depth"],
                                  "finetune.mtl_steps": 3 * prof.finetune.steps})
    vals = {  # (joint?, steps) -> main val metric per task: miou (higher) and abs_err (lower)
        (False, prof.finetune.steps): {"segmentation": 0.50, "depth": 0.300},
        (False, 2 * prof.finetune.steps): {"segmentation": 0.504, "depth": 0.290},
        (True, prof.finetune.mtl_steps): {"segmentation": 0.40, "depth": 0.300},
        (True, 2 * prof.finetune.mtl_steps): {"segmentation": 0.403, "depth": 0.299}}

    def fake(p, task, seed=0, weighting="equal"):
        joint = not isinstance(task, str)
        v = vals[joint, p.finetune.mtl_steps if joint else p.finetune.steps]
        main = {"segmentation": "miou", "depth": "abs_err"}
        return SimpleNamespace(meta={"steps": 7, "val": {t: {main[t]: x} for t, x in v.items()}})

    monkeypatch.setattr(verdict, "finetuned", fake)
    c = verdict.convergence(prof, 0)
    st, mt = c["single-task"]["tasks"], c["joint MTL"]["tasks"]
    assert st["segmentation"]["gain"] == pytest.approx(0.008) and st["segmentation"]["converged"]
    assert st["depth"]["gain"] == pytest.approx(1 / 30) and not st["depth"]["converged"]
    assert not c["single-task"]["converged"]
    assert mt["segmentation"]["gain"] == pytest.approx(0.0075)
    assert mt["depth"]["gain"] == pytest.approx(1 / 300)  # a lower abs_err counts as a gain
    assert c["joint MTL"]["converged"]


def test_claim_reads_the_gap_per_seed_and_costs_both_ways():
    study = _fake_study(tried=3)
    summary = {p: {"joint_mtl": {"seeds": [-3.0, -4.0]}, "a+repr": {"seeds": [-6.0, -9.0]}}
               for p in protocol.PROTOCOLS}
    costs = {"joint_mtl": {s: {"steps": 900, "samples": 600} for s in ("alone", "pipeline")},
             "a+repr": {"alone": {"steps": 150, "samples": 150},
                        "pipeline": {"steps": 2000, "samples": 600}}}
    c = verdict.claim(study, summary, costs)
    assert c["method"] == "a+repr" and c["gap"]["mean"] == 4.0 and c["gap"]["ci95"][0] < 4.0
    assert (c["steps_ratio"], c["samples_ratio"], c["holds"]) == (6.0, 4.0, False)  # gap > 3
    assert c["pipeline"]["steps_ratio"] == 0.45 and c["original_lambda"]["gap"]["mean"] == 4.0
