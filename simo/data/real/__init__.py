"""Real datasets read from a local ``data_root`` (nothing is downloaded): NYUv2 and Cityscapes in
the MTAN layout, a Taskonomy subset in its PNG encodings.

``load(profile, split, fields)`` returns numpy arrays in MTAN layout (N,H,W[,C]) with the field
names the tasks read; ``make_dataset`` turns them into training tensors. Images are downscaled so
the short side is at most ``data.image_size`` (smoke and tiny run on real data too), a split holds
at most ``data.n_<split>`` samples, and ``pretrain`` is the train images, centre-cropped square
(SimMIM needs no labels; a profile with ``model.weights`` never asks for it). Every malformed or
missing piece fails with one line saying what was expected where. One module per dataset; this
package is one unit for the cache's code hash (``data.real``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from simo.config import Profile
from simo.data.real import cityscapes, nyuv2, taskonomy
from simo.data.real.common import stack
from simo.errors import DataError

MODULES = {"nyuv2": nyuv2, "cityscapes": cityscapes, "taskonomy": taskonomy}


def fields_for(profile: Profile) -> tuple[str, ...]:
    """``image`` plus the field each of the profile's tasks reads, in task order."""
    from simo.tasks import get_tasks

    targets = [t.target for t in get_tasks(profile.tasks, profile.data.num_classes)]
    return tuple(dict.fromkeys(["image", *targets]))


def root_of(profile: Profile) -> Path:
    """``<data_root>/<dataset>``, checked to exist."""
    name = profile.data.dataset
    layout = MODULES[name].LAYOUT if name in MODULES else f"{name}/..."
    if not profile.data.data_root:
        raise DataError(f"dataset {name!r} needs data_root: pass the directory that holds "
                        f"{name}/ (e.g. -p data_root /data), laid out as {layout}")
    root = Path(profile.data.data_root) / name
    if not root.is_dir():
        raise DataError(f"no {name}/ under data_root {profile.data.data_root}; expected {layout} "
                        f"(i.e. {root}/...)")
    return root


def load(profile: Profile, split: str, fields: tuple[str, ...] | None = None
         ) -> dict[str, np.ndarray]:
    """The ``split`` of the profile's real dataset as MTAN-layout arrays."""
    from simo.tasks import TASK_NAMES, get_task

    d = profile.data
    if d.dataset not in MODULES:
        raise DataError(f"no loader for dataset {d.dataset!r}; real datasets: "
                        f"{', '.join(MODULES)}")
    mod = MODULES[d.dataset]
    fields = ("image",) if split == "pretrain" else tuple(fields or fields_for(profile))
    for f in fields:
        if f not in mod.FIELDS:
            tasks = [t for t in TASK_NAMES if get_task(t).target in mod.FIELDS]
            raise DataError(f"{d.dataset} has no {f!r} field (it has {', '.join(mod.FIELDS)}); "
                            f"choose tasks among {', '.join(tasks)}")
    root = root_of(profile)
    limit = {"pretrain": d.n_pretrain, "train": d.n_train, "val": d.n_val, "test": d.n_test}[split]
    source = "train" if split == "pretrain" else split
    num_classes = d.num_classes or 0
    read = tuple(dict.fromkeys(("image", *fields)))  # the image fixes every sample's size
    readers = mod.readers(root, source, read, limit, num_classes)
    if not readers:
        raise DataError(f"split {split!r} of {d.dataset} under {root} is empty (n_{split} = "
                        f"{limit}); check the profile's data sizes and the dataset's files")
    out = stack(readers, read, d.image_size, num_classes, square=split == "pretrain")
    return {k: out[k] for k in fields}
