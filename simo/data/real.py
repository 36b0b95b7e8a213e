"""Real datasets read from a local ``data_root`` (nothing is downloaded): NYUv2 in the MTAN layout.

``load(profile, split, fields)`` returns numpy arrays in MTAN layout (N,H,W[,C]); ``make_dataset``
turns them into training tensors. Every loader fails with one line saying what was expected where.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from simo.config import Profile
from simo.errors import DataError

DEFAULT_FIELDS = ("image", "label", "depth", "normal")


def root_of(profile: Profile) -> Path:
    """``<data_root>/<dataset>``, checked to exist."""
    name = profile.data.dataset
    if not profile.data.data_root:
        raise DataError(f"dataset {name!r} needs data_root: pass the directory that holds "
                        f"{name}/ (e.g. -p data_root /data)")
    root = Path(profile.data.data_root) / name
    if not root.is_dir():
        raise DataError(f"no {name}/ under data_root {profile.data.data_root}; expected "
                        f"{root}/{{train,val}}/{{image,label,depth,normal}}/<i>.npy")
    return root


def load(profile: Profile, split: str, fields: tuple[str, ...] | None = None
         ) -> dict[str, np.ndarray]:
    """The ``split`` of the profile's real dataset as MTAN-layout arrays."""
    from simo.data import mtan

    return mtan.read_split(root_of(profile), split, tuple(fields or DEFAULT_FIELDS))
