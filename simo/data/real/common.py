"""What every real-dataset loader shares: strict checks, resizing to the profile, stacking.

A loader lists its samples as *readers* (one callable per sample returning arrays in our units
and the file each came from); :func:`stack` runs them, checks every sample, fits it to the
profile's size and stacks the split. Checks name the offending file in one line, because a
malformed sample otherwise surfaces as a shape error or a NaN loss deep in training.
"""
from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from simo.data import LABEL_FIELDS
from simo.data.mtan import load_npy as read_npy  # noqa: F401 (one .npy reader)
from simo.errors import DataError
from simo.tasks import PART_CLASSES

Sample = tuple[dict[str, np.ndarray], dict[str, Path]]  # arrays in our units, their source files
Reader = Callable[[], Sample]

SMOOTH_FIELDS = ("image", "edge", "keypoint")  # resampled bilinearly; the rest by nearest neighbour
_INDEX = re.compile(r"(0|[1-9][0-9]*)\.npy")


def npy_count(d: Path, what: str, layout: str) -> int:
    """Number of ``0.npy .. N-1.npy`` files in ``d`` (``what`` names it in errors)."""
    if not d.is_dir():
        raise DataError(f"no {what} under DATA_ROOT ({d}); expected {layout}")
    idx = sorted(int(m.group(1)) for p in d.iterdir() if (m := _INDEX.fullmatch(p.name)))
    if not idx:
        raise DataError(f"{what} under DATA_ROOT ({d}) has no <i>.npy files; expected {layout}")
    if idx[-1] != len(idx) - 1:
        missing = next(i for i in range(len(idx)) if i != idx[i])
        raise DataError(f"{what} ({d}) is missing {missing}.npy; expected 0.npy..{idx[-1]}.npy")
    return len(idx)


def check_counts(name: str, split_dir: str, counts: dict[str, int]) -> int:
    """The one sample count that every field directory of a split must share."""
    if len(set(counts.values())) > 1:
        raise DataError(f"{name}/{split_dir} has different sample counts per field "
                        f"({', '.join(f'{k}: {v}' for k, v in counts.items())}); every field "
                        "needs one <i>.npy per sample")
    return next(iter(counts.values()))


def seeded_part(n: int, part: tuple[float, float] | None, seed: int = 42) -> list[int]:
    """Indices of a fixed random part of ``n`` samples: ``torch.utils.data.random_split`` with
    ``Generator().manual_seed(seed)``, as the SIMO code splits NYUv2's and Cityscapes' sets."""
    if part is None:
        return list(range(n))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return perm[round(part[0] * n):round(part[1] * n)]


def check_sample(arrays: dict[str, np.ndarray], files: dict[str, Path], num_classes: int) -> None:
    """Fail in one line, naming the file, on anything that would break training silently."""
    img = arrays["image"]
    if img.ndim != 3 or img.shape[-1] != 3:
        raise DataError(f"{files['image']}: image must be H x W x 3, got shape {img.shape}")
    for field, a in arrays.items():
        f = files[field]
        if a.shape[:2] != img.shape[:2] or a.ndim != (3 if field in ("image", "normal") else 2):
            want = f"{img.shape[:2]}" + (" x 3" if field == "normal" else "")
            raise DataError(f"{f}: {field} has shape {a.shape}, its image is {img.shape}; every "
                            f"field of a sample needs the image's height and width ({want})")
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise DataError(f"{f}: {field} contains NaN or inf; fix or drop that sample "
                            f"(invalid pixels are {'-1' if field in LABEL_FIELDS else '0'})")
        if field in LABEL_FIELDS:
            n = PART_CLASSES if field == "part" else num_classes
            if a.dtype.kind == "f" and not (a == np.round(a)).all():
                raise DataError(f"{f}: {field} must hold integer class ids, got fractions")
            if a.size and (a.min() < -1 or a.max() >= n):
                raise DataError(f"{f}: {field} values span [{a.min():g}, {a.max():g}]; expected "
                                f"-1 (ignore) or 0..{n - 1} ({n} classes, data.num_classes)")
        elif field in ("image", "edge", "keypoint") and a.size and (a.min() < 0 or a.max() > 1):
            raise DataError(f"{f}: {field} values span [{a.min():g}, {a.max():g}]; expected "
                            "floats in [0, 1] (divide 8-bit images by 255)")
        elif field in ("depth", "disparity") and a.size and a.min() < 0:
            raise DataError(f"{f}: {field} has negative values ({a.min():g}); expected >= 0 "
                            "with 0 marking invalid pixels")


def fit(arrays: dict[str, np.ndarray], size: int, square: bool = False) -> dict[str, np.ndarray]:
    """Downscale so the short side is at most ``size`` (aspect kept), optionally centre-cropped
    to a square first. Smooth fields bilinearly (antialiased); targets by nearest neighbour, so
    labels stay labels and invalid pixels stay invalid."""
    h, w = arrays["image"].shape[:2]
    if square and h != w:
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        arrays = {k: v[top:top + s, left:left + s] for k, v in arrays.items()}
        h = w = s
    if min(h, w) <= size:
        return arrays
    scale = size / min(h, w)
    out_hw = (max(1, round(h * scale)), max(1, round(w * scale)))
    out = {}
    for k, v in arrays.items():
        t = torch.from_numpy(np.ascontiguousarray(v)).float()
        t = t.permute(2, 0, 1)[None] if t.ndim == 3 else t[None, None]
        if k in SMOOTH_FIELDS:
            t = F.interpolate(t, size=out_hw, mode="bilinear", align_corners=False, antialias=True)
        else:
            t = F.interpolate(t, size=out_hw, mode="nearest")
        t = t[0].permute(1, 2, 0) if v.ndim == 3 else t[0, 0]
        out[k] = t.numpy().astype(v.dtype)
    return out


def stack(readers: Sequence[Reader], fields: Sequence[str], size: int, num_classes: int,
          square: bool = False) -> dict[str, np.ndarray]:
    """Read, check and fit every sample (a few threads: decoding dominates), then stack."""

    def one(read: Reader) -> dict[str, np.ndarray]:
        arrays, files = read()
        check_sample(arrays, files, num_classes)
        return fit({k: arrays[k] for k in fields}, size, square)

    out: dict[str, np.ndarray] = {}
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for i, sample in enumerate(pool.map(one, readers)):
            if not out:  # filled in place: a second copy of Taskonomy would not fit in memory
                out = {k: np.empty((len(readers),) + v.shape,
                                   np.int64 if k in LABEL_FIELDS else np.float32)
                       for k, v in sample.items()}
            for k, v in sample.items():
                if v.shape != out[k].shape[1:]:
                    raise DataError(f"sample {i} of the split has {k} of shape {v.shape} but "
                                    f"sample 0 has {out[k].shape[1:]}; every image of a split "
                                    "needs one size")
                out[k][i] = v
    return out
