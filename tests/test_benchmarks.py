"""The step-time benchmark builds and trains every shape it lists (the timings themselves are not
asserted: speed targets live in the benchmark's printed ratios, not in tests)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


step_time = _load("step_time")


@pytest.mark.parametrize("shape", step_time.SHAPES)
def test_step_time_runs_each_shape(shape):
    size, width, depth, heads, patch = shape
    assert width % heads == 0 and size % patch == 0  # a valid ViT
    assert step_time.step_seconds(size, width, depth, heads, patch, steps=1, batch=2) > 0


gpu_check = _load("gpu_check")


def test_gpu_check_compares_every_shared_number_but_seconds():
    a = {"x": {"m": 2.0, "n": 1.0}, "seconds": 5.0, "only_a": 1.0}
    b = {"x": {"m": 1.0, "n": 1.0}, "seconds": 1.0}
    assert gpu_check.rel_diffs(a, b) == {"x.m": 1.0, "x.n": 0.0}


@pytest.mark.parametrize("on", [True, False])
def test_gpu_check_tf32_holds_inside_and_restores_the_flags(on):
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    with gpu_check.tf32(on):
        assert torch.backends.cuda.matmul.allow_tf32 is on and torch.backends.cudnn.allow_tf32 is on
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before


def test_gpu_check_times_a_step_at_every_precision():
    """The step timer under each precision (bf16 autocast runs on CPU too), on a tiny model."""
    small = step_time.shape_profile(32, 16, 2, 2, 8)
    for kind in gpu_check.PRECISIONS:
        assert gpu_check.step_seconds(small, ["depth"], kind, torch.device("cpu"), steps=1) > 0
