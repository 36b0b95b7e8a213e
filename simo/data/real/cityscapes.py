"""Cityscapes in the MTAN layout: ``cityscapes/{train,val}/<field dir>/<i>.npy``.

image 128 x 256 x 3 floats in [0, 1]; ``label_19`` (19 classes) or ``label_7`` (7 categories), -1 =
ignore, chosen by ``data.num_classes``; ``depth`` holds *disparity* (inverse depth; MTAN: 0 invalid,
Auto-Lambda's export: -1 invalid, both become 0) and is served as the ``disparity`` field; part
segmentation (``part_seg``, 10 classes, as Auto-Lambda exports it) is read where present. Splits as
in the SIMO code: MTAN's 2975 train images split 2380 train / 595 validation (seed 42), MTAN's 500
val images are the test set. A ``test/`` directory, if present, makes the directories the splits.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Sequence

import numpy as np

from simo.data.real.common import (Reader, Sample, check_counts, npy_count, read_npy,
                                    seeded_part)

FIELDS = ("image", "label", "disparity", "part")
LAYOUT = "cityscapes/{train,val}/{image,label_19|label_7,depth[,part_seg]}/<i>.npy (MTAN layout)"
SPLITS = {"train": ("train", (0.0, 0.8)), "val": ("train", (0.8, 1.0)), "test": ("val", None)}


def directory(field: str, num_classes: int) -> str:
    """The MTAN directory that holds ``field``."""
    return {"image": "image", "label": f"label_{num_classes}", "disparity": "depth",
            "part": "part_seg"}[field]


def _read(root: Path, split_dir: str, dirs: dict[str, str], i: int) -> Sample:
    files = {f: root / split_dir / d / f"{i}.npy" for f, d in dirs.items()}
    arrays = {}
    for f, p in files.items():
        a = read_npy(p)
        if f != "image" and a.ndim == 3 and a.shape[-1] == 1:
            a = a[..., 0]
        a = a.astype(np.float32, copy=False)
        if f == "disparity":
            a = np.where(a < 0, np.float32(0), a)  # -1 (Auto-Lambda) = invalid = 0 here
        arrays[f] = a
    return arrays, files


def readers(root: Path, split: str, fields: Sequence[str], limit: int,
            num_classes: int = 19) -> list[Reader]:
    """One reader per sample of ``split`` (at most ``limit``); labels from ``label_<classes>``."""
    split_dir, part = (split, None) if (root / "test").is_dir() else SPLITS[split]
    dirs = {f: directory(f, num_classes) for f in fields}
    counts = {f: npy_count(root / split_dir / d, f"cityscapes/{split_dir}/{d}", LAYOUT)
              for f, d in dirs.items()}
    n = check_counts("cityscapes", split_dir, counts)
    return [partial(_read, root, split_dir, dirs, i) for i in seeded_part(n, part)[:limit]]
