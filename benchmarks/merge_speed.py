"""Wall time and peak memory of simo.merging vs a flatten-everything reference, on ViT-sized models.

Why: the reference TIES code (Yadav et al., arXiv 2306.01708) stacks all task vectors into one
T × N matrix to get a global kthvalue per task; simo.merging works one key at a time and finds the
same thresholds by radix selection. This script checks both claims at ViT-B scale: identical
outputs (max |Δ| printed) and much lower peak memory.

Each measurement runs in a FRESH spawned process: it builds the random inputs (seeded, in place,
no temporaries), resets the kernel's peak-RSS mark (/proc/self/clear_refs; falls back to
ru_maxrss), runs one merge and reports time and peak RSS above the inputs' RSS. Outputs are saved
to a temporary folder and compared afterwards.

    python benchmarks/merge_speed.py --size base --tasks 3 8
    python benchmarks/merge_speed.py --size small --tasks 3      # quick check
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SIZES = {  # (depth, width, mlp width, tokens, patch)
    "base": (12, 768, 3072, 197, 16),  # ViT-B/16, ≈86M parameters
    "small": (12, 384, 1536, 197, 16),  # ViT-S/16, ≈22M parameters
}
METHODS = {"ta": "task_arithmetic", "ties": "ties"}


# ------------------------------------------------------------------------------- inputs
def vit_shapes(size: str) -> dict[str, tuple[int, ...]]:
    """timm VisionTransformer encoder state-dict shapes (no head)."""
    depth, dim, hidden, tokens, patch = SIZES[size]
    shapes: dict[str, tuple[int, ...]] = {
        "cls_token": (1, 1, dim), "pos_embed": (1, tokens, dim),
        "patch_embed.proj.weight": (dim, 3, patch, patch), "patch_embed.proj.bias": (dim,),
    }
    for i in range(depth):
        b = f"blocks.{i}."
        shapes.update({
            b + "norm1.weight": (dim,), b + "norm1.bias": (dim,),
            b + "attn.qkv.weight": (3 * dim, dim), b + "attn.qkv.bias": (3 * dim,),
            b + "attn.proj.weight": (dim, dim), b + "attn.proj.bias": (dim,),
            b + "norm2.weight": (dim,), b + "norm2.bias": (dim,),
            b + "mlp.fc1.weight": (hidden, dim), b + "mlp.fc1.bias": (hidden,),
            b + "mlp.fc2.weight": (dim, hidden), b + "mlp.fc2.bias": (dim,),
        })
    shapes.update({"norm.weight": (dim,), "norm.bias": (dim,)})
    return shapes


def build_inputs(size: str, n_tasks: int, seed: int = 0):
    """Seeded pretrained weights and n_tasks finetuned = pretrained + noise, built in place."""
    gen = torch.Generator().manual_seed(seed)
    pre = {k: torch.empty(s).normal_(0.0, 0.02, generator=gen) for k, s in vit_shapes(size).items()}
    fts = []
    for _ in range(n_tasks):
        fts.append({k: torch.empty_like(v).normal_(0.0, 1e-3, generator=gen).add_(v)
                    for k, v in pre.items()})
    return pre, fts


# ------------------------------------------------------------------------------- reference
def _flatten_task_vectors(pre, fts):
    """One (T, N) matrix of all task vectors: what the reference implementations build."""
    n = sum(v.numel() for v in pre.values())
    flat = torch.empty(len(fts), n)
    for t, ft in enumerate(fts):
        pos = 0
        for k, v in pre.items():
            flat[t, pos:pos + v.numel()] = (ft[k] - v).view(-1)
            pos += v.numel()
    return flat


def _unflatten(pre, merged_flat, lam):
    out, pos = {}, 0
    for k, v in pre.items():
        out[k] = merged_flat[pos:pos + v.numel()].view(v.shape).mul_(lam).add_(v)
        pos += v.numel()
    return out


def reference_task_arithmetic(pre, fts, lam=1.0):
    """θ0 + lam·Σ τ over the flattened (T, N) matrix."""
    return _unflatten(pre, _flatten_task_vectors(pre, fts).sum(dim=0), lam)


def reference_ties(pre, fts, k=20.0, lam=1.0):
    """Reference TIES over the flattened (T, N) matrix (ties-merging ``topk_values_mask``,
    ``resolve_sign``, ``disjoint_merge``); already frugal: row-wise kthvalue, in-place trimming."""
    flat = _flatten_task_vectors(pre, fts)
    n = flat.shape[1]
    kidx = n - int(n * (k / 100.0))
    if kidx > 0:
        for t in range(len(fts)):  # trim
            mag = flat[t].abs()
            flat[t].mul_(mag >= mag.kthvalue(kidx).values)
            del mag
    sign = flat.sum(dim=0).sign_()  # elect sign
    sign[sign == 0] = torch.sign(sign.sum())
    keep = torch.where(sign > 0, flat > 0, flat < 0)  # disjoint mean
    del sign
    count = keep.sum(dim=0).clamp_(min=1)
    merged = flat.mul_(keep).sum(dim=0).div_(count)
    del flat, keep, count
    return _unflatten(pre, merged, lam)


# ------------------------------------------------------------------------------- measurement
def _rss_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(size: str, n_tasks: int, method: str, impl: str, k: float, out_path: str,
            threads: int) -> dict:
    """Child process: build inputs, run one merge, report seconds and peak RSS above the inputs."""
    from simo import merging

    if threads > 0:
        torch.set_num_threads(threads)

    pre, fts = build_inputs(size, n_tasks)
    if impl == "simo":
        run = (lambda: merging.merge("ties", pre, fts, k=k, scope="global")) if method == "ties" \
            else (lambda: merging.merge("task_arithmetic", pre, fts))
    else:
        run = (lambda: reference_ties(pre, fts, k=k)) if method == "ties" \
            else (lambda: reference_task_arithmetic(pre, fts))
    exact = _reset_peak()
    base_kib = _rss_kib("VmRSS") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    out = run()
    seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu_start
    peak_kib = _rss_kib("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    torch.save(out, out_path)
    return {"seconds": seconds, "cpu": cpu, "peak_mib": (peak_kib - base_kib) / 1024,
            "inputs_mib": base_kib / 1024, "exact_peak": exact}


def run_child(*args) -> dict:
    ctx = mp.get_context("spawn")
    with ctx.Pool(1, maxtasksperchild=1) as pool:
        return pool.apply(measure, args)


def max_abs_diff(path_a: str, path_b: str) -> float:
    a = torch.load(path_a, mmap=True, weights_only=True)
    b = torch.load(path_b, mmap=True, weights_only=True)
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[3, 8])
    parser.add_argument("--size", choices=sorted(SIZES), default="base")
    parser.add_argument("--methods", nargs="+", choices=sorted(METHODS), default=["ta", "ties"])
    parser.add_argument("--k", type=float, default=20.0, help="TIES percent kept")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (0: torch's default). Default 1: on a shared machine "
                        "OpenMP threads spin on busy cores and wall times become noise")
    args = parser.parse_args(argv)

    n_params = sum(torch.Size(s).numel() for s in vit_shapes(args.size).values())
    print(f"ViT-{args.size}: {n_params / 1e6:.1f}M parameters ({n_params * 4 / 2**20:.0f} MiB "
          f"per fp32 model); torch {torch.__version__}, "
          f"{args.threads or torch.get_num_threads()} threads; "
          f"TIES k={args.k:g}, scope=global")
    rows = []
    with tempfile.TemporaryDirectory(prefix="merge_speed_") as tmp:
        for n_tasks in args.tasks:
            for method in args.methods:
                res, paths = {}, {}
                for impl in ("simo", "reference"):
                    paths[impl] = os.path.join(tmp, f"{method}_{n_tasks}_{impl}.pt")
                    res[impl] = run_child(args.size, n_tasks, method, impl, args.k, paths[impl],
                                          args.threads)
                    print(f"  T={n_tasks} {method:4s} {impl:9s} {res[impl]['seconds']:7.2f} s "
                          f"(cpu {res[impl]['cpu']:6.2f} s) "
                          f"peak +{res[impl]['peak_mib']:7.0f} MiB "
                          f"(inputs {res[impl]['inputs_mib']:.0f} MiB)", flush=True)
                diff = max_abs_diff(paths["simo"], paths["reference"])
                for p in paths.values():
                    os.remove(p)
                rows.append((n_tasks, method, res["simo"], res["reference"], diff))

    exact = all(r[2]["exact_peak"] and r[3]["exact_peak"] for r in rows)
    print()
    print("peak = max RSS during the merge minus RSS with inputs built "
          + ("(VmHWM after clear_refs)" if exact else "(ru_maxrss; a lower bound)"))
    head = (f"{'T':>2} {'method':6} {'simo s':>8} {'ref s':>8} {'time ratio':>10} "
            f"{'cpu ratio':>9} "
            f"{'simo MiB':>9} {'ref MiB':>9} {'mem ratio':>9} {'max|Δ|':>9}")
    print(head)
    print("-" * len(head))
    ok = True
    for n_tasks, method, simo, ref, diff in rows:
        t_ratio = simo["seconds"] / ref["seconds"]
        m_ratio = ref["peak_mib"] / max(simo["peak_mib"], 1.0)
        c_ratio = simo["cpu"] / max(ref["cpu"], 1e-9)
        print(f"{n_tasks:>2} {method:6} {simo['seconds']:8.2f} {ref['seconds']:8.2f} "
              f"{t_ratio:9.2f}x {c_ratio:8.2f}x {simo['peak_mib']:9.0f} {ref['peak_mib']:9.0f} "
              f"{m_ratio:8.1f}x {diff:9.2e}")
        ok &= diff <= 1e-6
    print("time/cpu ratio = simo / reference wall/CPU seconds (lower is faster); "
          "mem ratio = reference / simo peak")
    print("outputs match (max|Δ| ≤ 1e-6)" if ok else "OUTPUTS DIFFER (max|Δ| > 1e-6)")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
