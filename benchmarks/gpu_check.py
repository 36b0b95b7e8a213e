"""The CUDA path of the study, checked and timed on one GPU: what `device: cuda` changes.

Why: every committed result runs on CPU, but the gpu profiles (`device: auto`) train on CUDA with
the same code. This script, run on a machine with a GPU, checks that path and sizes it:

1. **pipeline**: the smoke profile at 200 finetuning steps, once on CUDA and once on CPU (fresh
   caches): single-task finetunes, joint MTL, an IVON run, task arithmetic with the original and
   realigned heads. It records every test metric on both devices and their relative differences
   (float order differs, so they are close, not equal).
2. **throughput**: one training step of the gpu profile's model (224 px, ViT-S/16, DPT heads,
   batch 32) for one task and for all three, in fp32, TF32 and bf16 autocast, as ratios against
   fp32 in this process, and the wall time that the profile's step counts imply.

Each stage that fails is recorded with its one-line error and the others still run.

    python benchmarks/gpu_check.py --out build/gpu_check.json
    python benchmarks/gpu_check.py --devices cpu --steps 20 --out /tmp/g.json   # a CPU dry run
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.step_time import mean_step_seconds  # noqa: E402
from simo import realign  # noqa: E402
from simo.config import load_profile, with_settings  # noqa: E402
from simo.merged import merge_setup  # noqa: E402
from simo.merging import merge  # noqa: E402
from simo.models.model import build_model  # noqa: E402
from simo.steps import finetuned, tasks_of  # noqa: E402

PRECISIONS = ("fp32", "tf32", "bf16")  # the first is the baseline of the ratios


def pipeline(device: str, steps: int) -> dict:
    """Test metrics of the smoke pipeline on ``device`` (its own fresh cache) and wall seconds."""
    profile = with_settings(load_profile("smoke"), {"device": device, "finetune.steps": steps})
    tasks, names = tasks_of(profile), list(profile.tasks)
    out: dict = {}
    with tempfile.TemporaryDirectory() as cache:
        os.environ["SIMO_CACHE"] = cache
        t = time.perf_counter()
        setup = merge_setup(profile, seed=0)
        out["single_task"] = {n: finetuned(profile, n).meta["test"][n] for n in names}
        out["joint_mtl"] = finetuned(profile, names).meta["test"]
        out["ivon"] = finetuned(profile, names[0], optimizer="ivon").meta["test"]
        enc = merge("task_arithmetic", setup.pretrained, setup.finetuned, lam=0.3)
        encoders, test = {n: enc for n in names}, setup.data("test")
        out["ta_original"] = realign.evaluate_encoders(profile, tasks, encoders, setup.heads, test)
        heads, _ = realign.realign_heads(profile, tasks, encoders, setup.heads, setup.data("val"))
        out["ta_realigned"] = realign.evaluate_encoders(profile, tasks, encoders, heads, test)
        out["seconds"] = time.perf_counter() - t
    return out


def rel_diffs(a: dict, b: dict, path: str = "") -> dict[str, float]:
    """``|a - b| / max(|b|, 1e-8)`` for every number both nested dicts hold."""
    out: dict[str, float] = {}
    for k in a.keys() & b.keys():
        key = f"{path}{k}"
        if isinstance(a[k], dict) and isinstance(b[k], dict):
            out.update(rel_diffs(a[k], b[k], key + "."))
        elif isinstance(a[k], (int, float)) and k != "seconds":
            out[key] = abs(a[k] - b[k]) / max(abs(b[k]), 1e-8)
    return out


@contextlib.contextmanager
def tf32(on: bool):
    """TF32 matmuls and convolutions on or off, for the whole step (backward too)."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = on
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def step_seconds(profile, names: list[str], kind: str, device: torch.device, steps: int) -> float:
    """Mean seconds of one AdamW step (forward + backward of every head) at ``kind`` precision:
    fp32 (TF32 off), TF32, or bf16 autocast around the forward (its backward follows its dtypes)."""
    model = build_model(profile, tasks_of(profile, names)).to(device)
    bs, size = profile.finetune.batch_size, profile.data.image_size
    x = torch.rand(bs, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    forward = ((lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if kind == "bf16"
               else contextlib.nullcontext)
    with tf32(kind == "tf32"):
        return mean_step_seconds(model, x, steps, forward)


def throughput(device: torch.device, steps: int) -> dict:
    """Step times of the gpu profile's model per precision, ratios vs fp32, implied run hours."""
    profile = load_profile("gpu")
    ft, names = profile.finetune, list(profile.tasks)
    runs = {"single_task": ([names[0]], ft.head_steps + ft.steps),
            "joint_mtl": (names, ft.head_steps + (ft.mtl_steps or ft.steps))}
    out: dict = {}
    for run, (ts, n) in runs.items():
        base = None
        for kind in PRECISIONS if device.type == "cuda" else PRECISIONS[:1]:
            s = step_seconds(profile, ts, kind, device, steps)
            base = base or s
            out[f"{run}.{kind}"] = {"ms_per_step": s * 1e3, "speedup_vs_fp32": base / s,
                                    "run_hours": s * n / 3600, "run_steps": n}
            print(f"  {run:12s} {kind:5s} {s * 1e3:8.1f} ms/step  {base / s:5.2f}x  "
                  f"{s * n / 3600:6.2f} h for {n} steps", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", nargs="+", default=["cuda", "cpu"], help="pipeline devices; "
                    "the first is compared against the others")
    ap.add_argument("--steps", type=int, default=200, help="finetuning steps of the pipeline")
    ap.add_argument("--bench-steps", type=int, default=20, help="timed steps per precision")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("build/gpu_check.json"))
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    rec: dict = {"device": torch.cuda.get_device_name(0) if cuda else "cpu",
                 "torch": torch.__version__, "python": platform.python_version(),
                 "cpus": os.cpu_count(), "pipeline": {}, "errors": {}}

    def stage(name: str, fn, *a) -> dict | None:
        print(f"[gpu_check] {name} ...", flush=True)
        try:
            return fn(*a)
        except Exception as e:  # noqa: BLE001 -- recorded, and the next stage still runs
            rec["errors"][name] = f"{type(e).__name__}: {e}".splitlines()[0]
            print(f"[gpu_check] {name} failed:\n{traceback.format_exc(limit=-8)}", flush=True)
            return None
        finally:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(rec, indent=1, default=str))

    for dev in args.devices:
        rec["pipeline"][dev] = stage(f"pipeline on {dev}", pipeline, dev, args.steps)
    first, *rest = args.devices
    for dev in rest:
        if rec["pipeline"][first] and rec["pipeline"][dev]:
            d = rel_diffs(rec["pipeline"][first], rec["pipeline"][dev])
            rec[f"rel_diff_{first}_vs_{dev}"] = {"max": max(d.values()), "per_metric": d}
            print(f"[gpu_check] {first} vs {dev}: max relative metric difference "
                  f"{max(d.values()):.2e} over {len(d)} metrics", flush=True)
    if not args.skip_throughput:
        rec["throughput"] = stage("throughput (gpu profile)", throughput,
                                  torch.device("cuda" if cuda else "cpu"), args.bench_steps)
    args.out.write_text(json.dumps(rec, indent=1, default=str))
    print(f"[gpu_check] wrote {args.out}; errors: {rec['errors'] or 'none'}")


if __name__ == "__main__":
    main()
