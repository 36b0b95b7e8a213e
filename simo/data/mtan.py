"""Read and write datasets in the MTAN on-disk layout: ``{root}/{split}/{field}/{i}.npy``.

Why: the preprocessed NYUv2 used by MTAN (Liu et al.) and most multi-task papers ships in this
layout, so writing our synthetic scenes the same way lets one loader serve both. Reading is
strict, because a silently misaligned or partial split corrupts every number downstream: each
problem becomes a one-line :class:`~simo.errors.DataError` that says what to fix. Files are read
with ``allow_pickle=False``; nothing is ever unpickled.
"""
from __future__ import annotations

import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Sequence

import numpy as np

from simo.errors import DataError

_INDEX = re.compile(r"(0|[1-9][0-9]*)\.npy")
_FINITE_FIELDS = ("depth", "normal", "image")  # NaN here means a broken sample, not "ignore"
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def _one_line(msg: object) -> str:
    return " ".join(str(msg).split())


def _check_name(name: str, what: str) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name in (".", ".."):
        raise DataError(f"invalid {what} name {name!r}: use letters, digits, '_', '-', '.'")


def write_split(root: str | Path, split: str, arrays: dict[str, np.ndarray]) -> None:
    """Write ``{root}/{split}/{field}/{i}.npy`` for every field and sample i, atomically.

    Everything goes into a temporary sibling directory that is then renamed into place, so a
    crash never leaves a half-written split (an existing split is replaced as a whole).
    """
    root = Path(root)
    _check_name(split, "split")
    if not arrays:
        raise DataError(f"nothing to write for split '{split}': pass a dict field -> array")
    counts = {}
    for field, arr in arrays.items():
        _check_name(field, "field")
        a = np.asarray(arr)
        if a.ndim < 1 or a.dtype == object:
            raise DataError(f"field '{field}' must be a numeric array with a leading sample "
                            f"dim, got dtype {a.dtype} shape {a.shape}")
        counts[field] = a.shape[0]
    if len(set(counts.values())) != 1:
        raise DataError(f"fields of split '{split}' have different sample counts {counts}; "
                        "pass arrays with one common leading dim")
    if next(iter(counts.values())) == 0:
        raise DataError(f"nothing to write for split '{split}': the arrays have 0 samples")
    root.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = root / f".{split}.tmp-{tag}"
    old = root / f".{split}.old-{tag}"
    final = root / split
    moved = False
    try:
        for field, arr in arrays.items():
            d = tmp / field
            d.mkdir(parents=True)
            for i, sample in enumerate(np.asarray(arr)):
                np.save(d / f"{i}.npy", np.ascontiguousarray(sample), allow_pickle=False)
        if final.exists():
            os.replace(final, old)  # a non-empty directory cannot be replaced in one step
            moved = True
        os.replace(tmp, final)
    except BaseException:
        if moved and not final.exists():
            os.replace(old, final)  # put the previous split back
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)


def _split_dir(root: Path, split: str) -> Path:
    if not root.is_dir():
        raise DataError(f"dataset root {root} does not exist or is not a directory; pass the "
                        f"directory that holds {split}/{{field}}/{{i}}.npy (MTAN layout)")
    d = root / split
    if not d.is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name[0] == ".")
        raise DataError(f"no split '{split}' under {root} (found: {', '.join(found) or 'none'});"
                        f" expected MTAN layout {split}/{{field}}/{{i}}.npy")
    return d


def _field_files(root: Path, split: str, field: str) -> list[Path]:
    """The files 0.npy .. N-1.npy of one field, checking that the indices are contiguous."""
    d = root / split / field
    if not d.is_dir():
        raise DataError(f"no nyuv2-like '{split}/{field}' under {root}; expected MTAN layout "
                        f"{split}/{field}/{{i}}.npy")
    idx = []
    for p in d.iterdir():
        if p.suffix != ".npy":
            continue  # stray non-array files (README, .DS_Store) are not samples
        m = _INDEX.fullmatch(p.name)
        if not m:
            raise DataError(f"unexpected file {p}: sample files must be named {{i}}.npy with "
                            "i = 0, 1, 2, ... (MTAN layout)")
        idx.append(int(m.group(1)))
    if not idx:
        raise DataError(f"empty split '{split}/{field}' under {root}: no {{i}}.npy files; "
                        "re-create the split")
    idx.sort()
    if idx[-1] != len(idx) - 1:
        have = set(idx)
        missing = next(i for i in range(len(idx)) if i not in have)
        raise DataError(f"'{split}/{field}' under {root} has non-contiguous indices "
                        f"(missing {missing}.npy); expected 0.npy..{len(idx) - 1}.npy")
    return [d / f"{i}.npy" for i in range(len(idx))]


def _check_counts(root: Path, split: str, files: dict[str, list[Path]]) -> int:
    sizes = {f: len(v) for f, v in files.items()}
    (f0, n0), *rest = sizes.items()
    for f, n in rest:
        if n != n0:
            raise DataError(f"'{split}/{f0}' has {n0} files but '{split}/{f}' has {n} under "
                            f"{root}; every field needs one {{i}}.npy per sample")
    return n0


def split_size(root: str | Path, split: str) -> int:
    """Number of samples of a split (all field directories must agree)."""
    root = Path(root)
    d = _split_dir(root, split)
    fields = sorted(p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not fields:
        raise DataError(f"empty split '{split}' under {root}: no field directories; expected "
                        f"MTAN layout {split}/{{field}}/{{i}}.npy")
    return _check_counts(root, split, {f: _field_files(root, split, f) for f in fields})


def load_npy(path: Path) -> np.ndarray:
    """A plain numeric ``.npy`` array (never unpickled), or a one-line DataError."""
    try:
        a = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"cannot read {path}: {_one_line(e)}; re-create it as a plain numeric "
                        ".npy array (no pickles)") from None
    if not isinstance(a, np.ndarray) or a.dtype.kind not in "biuf":
        raise DataError(f"cannot read {path}: not a plain numeric .npy array; re-create it")
    return a


def read_split(root: str | Path, split: str, fields: Sequence[str]) -> dict[str, np.ndarray]:
    """Stack ``{root}/{split}/{field}/{i}.npy`` for i in 0..N-1 into arrays (N, ...) per field.

    Accepts the shapes of real MTAN NYUv2 (image H x W x 3 in [0,1], label H x W with -1 =
    ignore, depth H x W or H x W x 1 -- a trailing 1 is squeezed -- and normal H x W x 3).
    """
    root = Path(root)
    if isinstance(fields, str):
        fields = [fields]
    fields = list(fields)
    if not fields:
        raise DataError(f"no fields requested from split '{split}' under {root}; pass e.g. "
                        "['image', 'label', 'depth', 'normal']")
    _split_dir(root, split)
    files = {f: _field_files(root, split, f) for f in fields}
    n = _check_counts(root, split, files)
    out = {}
    for field, paths in files.items():
        first = load_npy(paths[0])
        squeeze = field == "depth" and first.ndim == 3 and first.shape[-1] == 1
        shape = first.shape[:-1] if squeeze else first.shape
        arr = np.empty((n,) + shape, first.dtype)
        for i, p in enumerate(paths):
            a = first if i == 0 else load_npy(p)
            if a.shape != first.shape:
                raise DataError(f"{p} has shape {a.shape} but {paths[0]} has {first.shape}; all "
                                f"samples of '{split}/{field}' must share one shape")
            arr[i] = a[..., 0] if squeeze else a
        if field in _FINITE_FIELDS and arr.dtype.kind in "fc":
            bad = ~np.isfinite(arr.reshape(n, -1)).all(1)
            if bad.any():
                i = int(np.argmax(bad))
                raise DataError(f"{paths[i]} contains NaN or inf; fix or drop that sample "
                                f"({field} must be finite)")
        out[field] = arr
    return out
