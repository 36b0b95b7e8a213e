"""A Taskonomy subset in its released PNG encodings, one directory per building and domain.

Layout: ``taskonomy/<building>/<domain>/point_<p>_view_<v>_domain_<domain>.png`` (the original
release), or domain first, ``taskonomy/<domain>/<building>/...`` (omnidata / taskgrouping). Domains
and their encodings (Zamir et al. 2018; the scale constants of the SIMO code's loader):
  rgb              8-bit RGB                          -> ``image`` in [0, 1]
  depth_euclidean  16-bit, 1/512 m; 65535 = no depth  -> ``depth`` in metres, 0 invalid
  normal           8-bit RGB, 127-centred             -> ``normal`` unit vectors, 0 invalid
  keypoints2d      16-bit, clipped at 3129            -> ``keypoint`` in [0, 1]
  edge_texture     16-bit, clipped at 11041           -> ``edge`` in [0, 1] (soft targets)
  mask_valid       optional 8-bit mask                -> invalid depth / normal where 0
Buildings of each split: ``taskonomy/splits.csv`` in Taskonomy's split-file format (``building,
train,val,test`` with 1/0 flags, a header line allowed), else the SIMO code's buildings. Each
split takes its first ``n_<split>`` images spread evenly over its buildings (sorted file names).
"""
from __future__ import annotations

import csv
import math
import re
from functools import partial
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from simo.data.real.common import Reader, Sample
from simo.errors import DataError

FIELDS = ("image", "depth", "normal", "edge", "keypoint")
DOMAINS = {"image": "rgb", "depth": "depth_euclidean", "normal": "normal", "edge": "edge_texture",
           "keypoint": "keypoints2d"}
LAYOUT = ("taskonomy/<building>/{rgb,depth_euclidean,normal,keypoints2d,edge_texture}/"
          "point_<p>_view_<v>_domain_<domain>.png")
# The SIMO code's buildings (training/utils.py): 8 x 2000 train, 4 x 1000 val and test images.
BUILDINGS = {
    "train": ("allensville", "coffeen", "collierville", "leonardo", "merom", "pinesdale",
              "ranchester", "stockman"),
    "val": ("beechwood", "corozal", "klickitat", "shelbyville"),
    "test": ("ihlen", "mcdade", "onaga", "tolstoy"),
}
DEPTH_UNITS = 512.0  # 16-bit value per metre
NO_DEPTH = 65535
KEYPOINT_MAX = 3129.0
EDGE_MAX = 11041.0
_RGB = re.compile(r"(point_\d+_view_\d+_domain_)rgb\.png")


def buildings(root: Path, split: str) -> list[str]:
    """The buildings of ``split``: from ``splits.csv`` if present, else :data:`BUILDINGS`."""
    f = root / "splits.csv"
    if not f.is_file():
        return list(BUILDINGS[split])
    col = {"train": 1, "val": 2, "test": 3}[split]
    with f.open(newline="") as fh:
        rows = [r for r in csv.reader(fh) if r and not r[0].startswith("#")]
    if rows and not rows[0][1:2] in (["0"], ["1"]):
        rows = rows[1:]  # header
    bad = [r for r in rows if len(r) < 4 or any(v.strip() not in ("0", "1") for v in r[1:4])]
    if bad:
        raise DataError(f"{f}: line {bad[0]!r} is not 'building,train,val,test' with 0/1 flags")
    return [r[0].strip() for r in rows if r[col].strip() == "1"]


def _domain_dir(root: Path, building: str, domain: str) -> Path:
    first = root / domain / building  # omnidata / taskgrouping layout
    return first if (root / "rgb").is_dir() else root / building / domain


def _png(path: Path, bits: int) -> np.ndarray:
    """Decode a PNG, checking Taskonomy's encoding (8-bit RGB or 16-bit single channel)."""
    if not path.is_file():
        raise DataError(f"no {path.name} in {path.parent}; every rgb image of {LAYOUT} needs its "
                        f"{path.parent.name} twin")
    try:
        with Image.open(path) as im:
            a = np.asarray(im.convert("RGB") if bits == 8 and im.mode in ("RGBA", "P") else im)
    except OSError as e:
        raise DataError(f"cannot read {path}: {' '.join(str(e).split())}") from None
    ok = (a.ndim == 3 and a.shape[-1] == 3 and a.dtype == np.uint8) if bits == 8 else (
        a.ndim == 2 and a.dtype in (np.uint16, np.int32))
    if not ok:
        want = "8-bit RGB" if bits == 8 else "16-bit single-channel"
        raise DataError(f"{path}: expected a {want} PNG (Taskonomy's encoding), got dtype "
                        f"{a.dtype} shape {a.shape}")
    return a


def _mask(path: Path) -> np.ndarray:
    """omnidata's ``mask_valid`` (any bit depth; named after the depth domain it masks)."""
    try:
        with Image.open(path) as im:
            a = np.asarray(im)
    except OSError as e:
        raise DataError(f"cannot read {path}: {' '.join(str(e).split())}") from None
    return (a if a.ndim == 2 else a[..., 0]) > 0


def _read(base: dict[str, Path], prefix: str, fields: Sequence[str]) -> Sample:
    files = {f: base[f] / f"{prefix}{DOMAINS[f]}.png" for f in fields}
    arrays: dict[str, np.ndarray] = {}
    valid = None
    if "depth" in fields or "normal" in fields:
        masks = sorted(base["mask"].glob(f"{prefix}*.png")) if base["mask"].is_dir() else []
        if masks:
            valid = _mask(masks[0])
        elif "depth" in fields:
            valid = _png(files["depth"], 16) != NO_DEPTH
    for f, p in files.items():
        if f == "image":
            arrays[f] = _png(p, 8).astype(np.float32) / 255.0
        elif f == "normal":
            n = _png(p, 8).astype(np.float32) / 255.0 * 2.0 - 1.0
            length = np.linalg.norm(n, axis=-1, keepdims=True)
            ok = (length[..., 0] > 0.5) & (True if valid is None else valid)
            arrays[f] = np.where(ok[..., None], n / np.maximum(length, 1e-6), 0).astype(np.float32)
        else:
            v = _png(p, 16).astype(np.float32)
            if f == "depth":
                ok = (v > 0) & (v != NO_DEPTH) & (True if valid is None else valid)
                arrays[f] = np.where(ok, v / DEPTH_UNITS, 0).astype(np.float32)
            else:
                top = KEYPOINT_MAX if f == "keypoint" else EDGE_MAX
                arrays[f] = np.clip(v / top, 0.0, 1.0)
    return arrays, files


def readers(root: Path, split: str, fields: Sequence[str], limit: int,
            num_classes: int = 0) -> list[Reader]:
    """One reader per image of the split's buildings (at most ``limit``, spread evenly)."""
    names = buildings(root, split)
    present = [b for b in names if _domain_dir(root, b, "rgb").is_dir()]
    if not present:
        raise DataError(f"no building of the {split} split ({', '.join(names) or 'none'}) under "
                        f"DATA_ROOT ({root}); expected {LAYOUT}, or list yours in "
                        "taskonomy/splits.csv")
    per_building = math.ceil(limit / len(present)) if limit else 0
    out: list[Reader] = []
    for b in present:
        base = {f: _domain_dir(root, b, DOMAINS[f]) for f in fields}
        base["mask"] = _domain_dir(root, b, "mask_valid")
        for f, d in base.items():
            if f != "mask" and not d.is_dir():
                raise DataError(f"no {d.relative_to(root.parent)} under DATA_ROOT ({root.parent})"
                                f"; the {f} field needs Taskonomy's {DOMAINS[f]} domain ({LAYOUT})")
        rgb = sorted(m.group(1) for p in base["image"].iterdir() if (m := _RGB.fullmatch(p.name)))
        out += [partial(_read, base, prefix, tuple(fields)) for prefix in rgb[:per_building]]
    return out[:limit]
