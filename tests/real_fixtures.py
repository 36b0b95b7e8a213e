"""Tiny datasets written in each real dataset's own on-disk format, for the tests.

NYUv2 and Cityscapes in the MTAN ``.npy`` layout (written with :func:`simo.data.mtan.write_split`),
a Taskonomy subset as per-building PNG domains with Taskonomy's bit depths and encodings.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from simo.data import mtan

H, W = 24, 32  # NYUv2's 288 x 384 aspect, tiny


def _normals(rng: np.random.Generator, n: int, h: int, w: int, valid: np.ndarray) -> np.ndarray:
    v = rng.standard_normal((n, h, w, 3)).astype(np.float32)
    v /= np.linalg.norm(v, axis=-1, keepdims=True)
    return np.where(valid[..., None], v, 0).astype(np.float32)


def write_nyuv2(root: Path, n_train: int = 4, n_val: int = 4, h: int = H, w: int = W,
                seed: int = 0) -> Path:
    """MTAN NYUv2: float images in [0,1], float labels with -1, depth (H,W,1) with 0 invalid."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        depth = (rng.random((n, h, w, 1)) * 5 + 0.5).astype(np.float32)
        depth[:, :2] = 0  # invalid rows
        mtan.write_split(root / "nyuv2", split, {
            "image": rng.random((n, h, w, 3), dtype=np.float32),
            "label": rng.integers(-1, 13, (n, h, w)).astype(np.float32),
            "depth": depth,
            "normal": _normals(rng, n, h, w, depth[..., 0] > 0)})
    return root


def write_cityscapes(root: Path, n_train: int = 5, n_val: int = 3, parts: bool = True,
                     seed: int = 0) -> Path:
    """Auto-Lambda / MTAN Cityscapes: label_19, label_7, disparity in depth/ (-1 invalid)."""
    rng = np.random.default_rng(seed)
    h, w = 16, 32
    for split, n in (("train", n_train), ("val", n_val)):
        disp = rng.random((n, h, w, 1)).astype(np.float32) * 0.2
        disp[:, 0] = -1.0
        arrays = {"image": rng.random((n, h, w, 3), dtype=np.float32),
                  "label_19": rng.integers(-1, 19, (n, h, w)).astype(np.float32),
                  "label_7": rng.integers(-1, 7, (n, h, w)).astype(np.float32),
                  "depth": disp}
        if parts:
            arrays["part_seg"] = rng.integers(-1, 10, (n, h, w)).astype(np.float32)
        mtan.write_split(root / "cityscapes", split, arrays)
    return root


TASKONOMY_FIXTURE = {"train": "allensville", "val": "beechwood", "test": "ihlen"}


def write_taskonomy(root: Path, per_building: int = 2, size: int = 16, domain_first: bool = False,
                    buildings: dict[str, str] | None = None, seed: int = 0) -> Path:
    """Taskonomy PNGs: 8-bit rgb and normal; 16-bit depth (1/512 m, 65535 none), keypoints, edges."""
    rng = np.random.default_rng(seed)
    base = root / "taskonomy"
    for b in (buildings or TASKONOMY_FIXTURE).values():
        for i in range(per_building):
            prefix = f"point_{i}_view_{i % 2}_domain_"
            depth = rng.integers(256, 4096, (size, size)).astype(np.uint16)
            depth[0] = 65535
            images = {"rgb": rng.integers(0, 256, (size, size, 3)).astype(np.uint8),
                      "depth_euclidean": depth,
                      "normal": rng.integers(0, 256, (size, size, 3)).astype(np.uint8),
                      "keypoints2d": rng.integers(0, 5000, (size, size)).astype(np.uint16),
                      "edge_texture": rng.integers(0, 20000, (size, size)).astype(np.uint16)}
            for domain, a in images.items():
                d = base / domain / b if domain_first else base / b / domain
                d.mkdir(parents=True, exist_ok=True)
                Image.fromarray(a).save(d / f"{prefix}{domain}.png")
    return root
