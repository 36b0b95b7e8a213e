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
