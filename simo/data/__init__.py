"""Datasets as in-memory tensor dicts, one function for every source: ``make_dataset``.

The embedded default renders synthetic scenes (``simo.data.scenes``) once per configuration into
the artifact cache, in the same MTAN on-disk layout as real NYUv2, and reads them back with the
same loader (``simo.data.mtan``). A dataset is a ``dict[str, Tensor]`` in training layout:
``image`` (N,3,H,W) float in [0,1]; ``label`` (N,H,W) int64, -1 ignore; ``depth`` (N,1,H,W), 0
invalid; ``normal`` (N,3,H,W), zero invalid; ``edge`` and ``keypoint`` (N,1,H,W). Real datasets
(``simo.data.real``) add ``disparity`` (N,1,H,W), 0 invalid, and ``part`` (N,H,W) int64, -1 ignore.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from simo import cache
from simo.config import Profile
from simo.errors import DataError, one_of

SPLITS = ("pretrain", "train", "val", "test")
# Fixed data seeds: the dataset is part of the study's definition; experiment seeds vary training.
_SPLIT_SEEDS = {"pretrain": 1000, "train": 1001, "val": 1002, "test": 1003}
_SPLIT_FIELDS = {"pretrain": ("image",)}
LABEL_FIELDS = ("label", "part")  # class maps: int64, nearest resampling, -1 = ignore


def to_tensors(arrays: dict[str, np.ndarray]) -> dict[str, Tensor]:
    """MTAN arrays (N,H,W,C) -> training tensors (N,C,H,W); labels int64."""
    out: dict[str, Tensor] = {}
    for k, a in arrays.items():
        t = torch.from_numpy(np.ascontiguousarray(a))
        if k in LABEL_FIELDS:
            out[k] = t.long()
        elif t.ndim == 4:
            out[k] = t.float().permute(0, 3, 1, 2).contiguous()
        else:
            out[k] = t.float().unsqueeze(1)
    return out


def scenes_root(profile: Profile, split: str) -> Path:
    """Render (once) one split of the profile's synthetic scenes; return its MTAN-layout root.

    Each split is its own cache entry, so changing ``n_train`` re-renders (and retrains on) the
    train split only, never the pretraining scenes.
    """
    from simo.data import mtan, scenes

    d = profile.data
    n = {"pretrain": d.n_pretrain, "train": d.n_train, "val": d.n_val, "test": d.n_test}[split]
    dist = "pretrain" if split == "pretrain" else "task"
    cfg = {"size": d.image_size, "split": split, "n": n, "seed": _SPLIT_SEEDS[split],
           "distribution": dist}

    def compute(out: Path, _partial: Path) -> None:
        arrays = scenes.render_scenes(n, seed=_SPLIT_SEEDS[split], size=d.image_size,
                                      distribution=dist, progress=True)
        if split == "pretrain":
            arrays = {"image": arrays["image"]}
        mtan.write_split(out, split, arrays)

    return cache.get_or_compute("scenes", cfg, compute).path


def make_dataset(profile: Profile, split: str, fields: tuple[str, ...] | None = None,
                 limit: int | None = None) -> dict[str, Tensor]:
    """The ``split`` of the profile's dataset as tensors (``fields`` default: all it has).

    The tensors are shared by every caller in this process (a split is read once): treat them as
    read-only, or clone before editing in place.
    """
    if split not in SPLITS:
        raise DataError(one_of(split, SPLITS, "split"))
    name = profile.data.dataset
    if name == "scenes":
        fields = fields or _SPLIT_FIELDS.get(split, ("image", "label", "depth", "normal", "edge",
                                                     "keypoint"))
        data = _read(str(scenes_root(profile, split)), split, tuple(fields))
    else:
        data = _read_real(profile, split, fields)
    if limit is not None:
        data = {k: v[:limit] for k, v in data.items()}
    if len(data["image"]) == 0:
        raise DataError(f"split {split!r} of {name} is empty; check the profile's data sizes")
    return data


_MEMO: dict[tuple, dict[str, Tensor]] = {}


def _read(root: str, split: str, fields: tuple[str, ...]) -> dict[str, Tensor]:
    """Read a split once per process: notebooks ask for the same split many times."""
    from simo.data import mtan

    key = (root, split, fields)
    if key not in _MEMO:
        _MEMO[key] = to_tensors(mtan.read_split(root, split, fields))
    return dict(_MEMO[key])


def _read_real(profile: Profile, split: str, fields: tuple[str, ...] | None
               ) -> dict[str, Tensor]:
    """A real dataset's split, once per process (``simo.data.real`` does the reading)."""
    from simo.data import real

    key = ("real", profile.data, profile.tasks, split, fields)
    if key not in _MEMO:
        _MEMO[key] = to_tensors(real.load(profile, split, fields))
    return dict(_MEMO[key])


def subset(data: dict[str, Tensor], n: int, seed: int) -> dict[str, Tensor]:
    """A seeded random subset of ``n`` samples (small labelled sets for realignment)."""
    total = len(data["image"])
    if n > total:
        raise DataError(f"asked for {n} samples but the split has {total}")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(total, generator=g)[:n].sort().values
    return {k: v[idx] for k, v in data.items()}


def random_zoom(batch: dict[str, Tensor], scales: Sequence[float], g: torch.Generator
                ) -> dict[str, Tensor]:
    """Zoom each sample by a factor drawn from ``scales`` and crop a random window of the original
    size: the paper's NYUv2 / Cityscapes augmentation, applied identically to every field.

    The image is resampled bilinearly, every target by nearest neighbour (labels stay labels,
    invalid pixels stay invalid). As in MTAN and the SIMO code, depth is divided by the factor and
    disparity multiplied (a k times larger object looks k times closer); normals keep their
    direction. Factors must be >= 1 (no padding needed).
    """
    n, (h, w) = len(batch["image"]), batch["image"].shape[-2:]
    pick = torch.randint(len(scales), (n,), generator=g)
    corner = torch.rand(n, 2, generator=g)
    out = {k: v.clone() for k, v in batch.items()}
    for j, s in enumerate(scales):
        rows = (pick == j).nonzero().flatten().tolist()
        if s == 1.0 or not rows:
            continue
        hh, ww = int(h * s), int(w * s)
        for k, v in batch.items():
            x = v[rows].float()
            x = x if x.ndim == 4 else x[:, None]
            x = (F.interpolate(x, size=(hh, ww), mode="bilinear", align_corners=False)
                 if k == "image" else F.interpolate(x, size=(hh, ww), mode="nearest"))
            if k == "depth":
                x = x / s
            elif k == "disparity":
                x = x * s
            for r, i in enumerate(rows):
                top = int(corner[i, 0] * (hh - h + 1))
                left = int(corner[i, 1] * (ww - w + 1))
                crop = x[r, :, top:top + h, left:left + w]
                out[k][i] = (crop if v.ndim == 4 else crop[0]).to(v.dtype)
    return out
