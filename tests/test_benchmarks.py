"""The step-time benchmark builds and trains every shape it lists (the timings themselves are not
asserted: speed targets live in the benchmark's printed ratios, not in tests)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

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
