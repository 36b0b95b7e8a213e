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


@pytest.mark.parametrize("kind", gpu_check.PRECISIONS)
def test_gpu_check_precision_restores_the_tf32_flags(kind):
    before = torch.backends.cuda.matmul.allow_tf32
    with gpu_check.precision(kind, torch.device("cpu")):
        assert torch.backends.cuda.matmul.allow_tf32 == (kind == "tf32")
    assert torch.backends.cuda.matmul.allow_tf32 == before
