"""Is θ0 a foundation model? The helpers of :mod:`simo.transfer`, on hand-made inputs (the whole
evidence runs in notebook 01's contract test on smoke)."""
from __future__ import annotations

import pytest
import torch

from simo import transfer
from simo.tasks import get_task


def test_steps_to_fraction_reads_the_validation_curve():
    seg, depth = get_task("segmentation"), get_task("depth")
    hist = [{"step": s, "val": {"segmentation": {"miou": v}, "depth": {"abs_err": e}}}
            for s, v, e in [(100, 0.1, 2.0), (200, 0.5, 1.1), (300, 0.96, 1.02), (400, 1.0, 1.0)]]
    assert transfer.steps_to_fraction(hist, seg) == 300
    assert transfer.steps_to_fraction(hist, depth) == 300  # 1/1.02 >= 0.95, 1/1.1 is not


def test_tv_norm_ratio_by_hand():
    theta0 = {"w": torch.tensor([3.0, 4.0]), "n": torch.tensor([0])}
    assert transfer.tv_norm_ratio(theta0, {"w": torch.tensor([3.0, 5.0]),
                                             "n": torch.tensor([7])}) == pytest.approx(0.2)


def _evidence(probe: float, long: float, tuned: float, ci_low: float) -> dict:
    return {"probe_points": probe, "probe_points_long": long,
            "probe_points_finetuned_encoder": tuned, "steps_to_95pct": 300,
            "gain_vs_scratch_pct": {"mean": ci_low + 5, "ci95": [ci_low, ci_low + 10]},
            "gain_vs_weak_pct": {"mean": 4.0}, "gain_vs_scratch_2x_steps_pct": 12.0,
            "tv_norm_ratio": 0.05,
            "by_init": {"steps_to_95pct": {"scratch": 900}, "tv_norm_ratio": {"weak": 0.2}}}


def test_facts_say_where_theta0_falls_short_and_why():
    results = {"foundation": {
        "objective": "aux", "weights_sha256": "0123456789abcdef",
        "tasks": {"depth": _evidence(90, 91, 95, 20), "edges": _evidence(50, 52, 80, 5),
                  "normals": _evidence(60, 75, 78, 15)},
        "task_arithmetic": {"foundation": {"delta_mtl": -3.0, "lam": 0.4},
                            "weak": {"delta_mtl": -9.0, "lam": 0.2}}},
        "plateau_gain": {"depth": 0.01, "edges": 0.05, "normals": -0.001},
        "lr_sweep": {"points": {1e-3: 97.0, 2e-3: 100.0, 4e-3: 101.5}, "best": 4e-3,
                     "current": 2e-3, "interior": False}}
    lines = transfer.facts(results, plateau_tol=0.02)
    assert lines[0] == "- θ0: aux (sha256 0123456789ab…)."
    assert "+25.0 % over scratch [+20.0, +30.0]" in lines[1] and "(scratch 900)" in lines[1]
    assert lines[4].endswith("on 2/3 tasks; not on: ['edges'].")
    assert lines[5].endswith("on 1/3 tasks; below on: ['edges', 'normals'].")
    assert lines[6].endswith("the frozen features, not the probe, are the limit.")  # 80 - 52 > 10
    assert lines[7].endswith("the probe's budget or head is the limit.")  # 78 - 75 <= 10
    assert "-3.0 (λ 0.4) from the foundation θ0, -9.0 (λ 0.2) from the weak θ0" in lines[8]
    assert lines[9] == ("- Finetuning lr on validation (mean points, 100 = the profile's 0.002): 0.001 "
                        "97.0, 0.002 100.0, 0.004 101.5; best 0.004 (on the sweep's edge); the "
                        "profile's lr is not the best: the gallery's runs are under-tuned.")
    assert lines[10].startswith("- 2/3 single-task runs moved less than 2%")
