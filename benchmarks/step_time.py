"""Training-step cost of candidate tiny-profile models, as ratios against a baseline in this process.

Why: a cold `make figures` on 2 cores is almost all training steps, so the profile's image size and
ViT shape set its wall time. This times one AdamW step (forward + backward, every task's head,
batch 32, one thread as each job worker uses) for a few (image size, width, depth, patch) settings
and prints each one's ratio to the first, the 48 px / width 96 / depth 6 recipe of the first
feasibility run. The last is today's tiny shape: patch 4, i.e. 64 tokens instead of 16.

    python benchmarks/step_time.py
    python benchmarks/step_time.py --steps 50 --threads 2
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from simo.steps import tasks_of  # noqa: E402
from simo.config import load_profile, with_settings  # noqa: E402
from simo.models.model import build_model  # noqa: E402

SHAPES = [  # (image size, width, depth, attention heads, patch); the first is the baseline
    (48, 96, 6, 3, 8),
    (32, 96, 6, 3, 8),
    (32, 64, 6, 2, 8),
    (32, 64, 4, 2, 8),
    (32, 64, 4, 2, 4),
]


def shape_profile(size: int, width: int, depth: int, heads: int, patch: int):
    """The tiny profile at this (image size, width, depth, attention heads, patch), random weights."""
    return with_settings(load_profile("tiny"), {
        "data.image_size": size, "model.embed_dim": width, "model.depth": depth,
        "model.num_heads": heads, "model.patch_size": patch, "model.weights": None,
        "model.feature_blocks": list(range(1, depth, 2))})  # tiny's taps


def step_seconds(size: int, width: int, depth: int, heads: int, patch: int, steps: int,
                 batch: int) -> float:
    """Mean seconds of one training step of the tiny profile's tasks at this shape."""
    profile = shape_profile(size, width, depth, heads, patch)
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    return mean_step_seconds(build_model(profile, tasks_of(profile)), x, steps)


def mean_step_seconds(model: nn.Module, x: Tensor, steps: int,
                      forward: Callable[[], AbstractContextManager] = contextlib.nullcontext
                      ) -> float:
    """Mean seconds of one AdamW step of ``model`` on ``x`` (forward of every head under
    ``forward()``, e.g. autocast; backward; update), after three warm-up steps, CUDA synchronized."""
    opt = torch.optim.AdamW(model.parameters(), 1e-4)

    def step() -> None:
        with forward():
            loss = sum(o.float().pow(2).mean() for o in model(x).values())
        opt.zero_grad()
        loss.backward()
        opt.step()

    def sync() -> None:
        if x.device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(3):  # warm-up: allocator and kernel selection (oneDNN, cuBLAS)
        step()
    sync()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return (time.perf_counter() - t) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    base = None
    print(f"{'image':>5} {'width':>5} {'depth':>5} {'patch':>5} {'ms/step':>8} {'vs first':>9}")
    for shape in SHAPES:
        s = step_seconds(*shape, steps=args.steps, batch=args.batch)
        base = base or s
        print(f"{shape[0]:>5} {shape[1]:>5} {shape[2]:>5} {shape[4]:>5} {s * 1e3:>8.1f} "
              f"{base / s:>8.2f}x")


if __name__ == "__main__":
    main()
