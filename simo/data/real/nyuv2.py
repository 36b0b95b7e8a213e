"""NYUv2 in the MTAN layout (Liu et al.): ``nyuv2/{train,val}/{image,label,depth,normal}/<i>.npy``.

image 288 x 384 x 3 floats in [0, 1]; label 288 x 384, 13 classes, -1 = ignore; depth 288 x 384 x 1,
0 = invalid; normal 288 x 384 x 3 unit vectors, zero where invalid. MTAN ships 795 train and 654 val
images (the official test set); like the SIMO code we split the 654 into 400 validation and 254
test images (``random_split`` with seed 42). A ``test/`` directory, if present, is used as is.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Sequence

import numpy as np

from simo.data.real.common import (Reader, Sample, check_counts, npy_count, read_npy,
                                    seeded_part)

FIELDS = ("image", "label", "depth", "normal")
LAYOUT = "nyuv2/{train,val}/{image,label,depth,normal}/<i>.npy (MTAN layout)"
# our split -> (MTAN directory, fraction of its seeded permutation)
SPLITS = {"train": ("train", None), "val": ("val", (0.0, 400 / 654)),
          "test": ("val", (400 / 654, 1.0))}


def source(root: Path, split: str) -> tuple[str, tuple[float, float] | None]:
    """The MTAN directory and part that hold ``split`` (a user's own ``test/`` wins)."""
    return (split, None) if (root / "test").is_dir() else SPLITS[split]


def _read(root: Path, split_dir: str, fields: Sequence[str], i: int) -> Sample:
    files = {f: root / split_dir / f / f"{i}.npy" for f in fields}
    arrays = {}
    for f, p in files.items():
        a = read_npy(p)
        if f == "depth" and a.ndim == 3 and a.shape[-1] == 1:
            a = a[..., 0]
        arrays[f] = a.astype(np.float32, copy=False)
    return arrays, files


def readers(root: Path, split: str, fields: Sequence[str], limit: int,
            num_classes: int = 13) -> list[Reader]:
    """One reader per sample of ``split`` (at most ``limit``); the label set is MTAN's 13."""
    split_dir, part = source(root, split)
    counts = {f: npy_count(root / split_dir / f, f"nyuv2/{split_dir}/{f}", LAYOUT) for f in fields}
    n = check_counts("nyuv2", split_dir, counts)
    return [partial(_read, root, split_dir, tuple(fields), i) for i in seeded_part(n, part)[:limit]]

