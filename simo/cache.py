"""Content-addressed artifacts: safetensors + JSON, written atomically, never pickled.

An artifact is a directory ``<cache>/<step>/<key>/`` holding ``tensors.safetensors`` (any number
of named tensors) and ``meta.json``. The key hashes the step's config, the keys of the artifacts it
was computed from and the source code of the modules it depends on, so editing ``train.py``
reruns training but not rendering. A computation writes into ``<key>.tmp-<pid>`` and is renamed
into place only when complete: a killed run leaves no half-written artifact. Long computations keep
resumable checkpoints in ``<key>.partial/`` (atomic files too), removed once the artifact lands.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from simo import paths
from simo.errors import CheckpointError

TENSORS = "tensors.safetensors"
META = "meta.json"
STATS = {"hits": 0, "misses": 0}  # read by the runner's summary


def _canonical(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(obj.items())}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if isinstance(obj, float):
        return repr(obj)
    return obj


def code_version(*modules: str) -> str:
    """Hash of the source files of ``simo`` modules (e.g. ``"train"``, ``"models"``)."""
    h = hashlib.sha256()
    pkg = paths.ROOT / "simo"
    for mod in sorted(modules):
        p = pkg / mod.replace(".", "/")
        files = sorted(p.rglob("*.py")) if p.is_dir() else [p.with_suffix(".py")]
        for f in files:
            h.update(f.relative_to(pkg).as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def make_key(step: str, config: Mapping[str, Any], code: str = "") -> str:
    blob = json.dumps({"step": step, "config": _canonical(config), "code": code}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


# ---------------------------------------------------------------- files ----------------------------

def _atomic_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def save_tensors(path: str | Path, tensors: Mapping[str, torch.Tensor],
                 metadata: Mapping[str, str] | None = None) -> None:
    """Atomically write a safetensors file (contiguous CPU copies; shared storage is fine)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _atomic_path(path)
    save_file({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, str(tmp),
              metadata=dict(metadata) if metadata else None)
    os.replace(tmp, path)


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file; a truncated or corrupt file is a one-line CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is missing; delete its cache entry to recompute")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({msg}); delete it "
                              "(or its cache entry) to recompute") from None


def save_json(path: str | Path, obj: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _atomic_path(path)
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, default=_json_default) + "\n")
    os.replace(tmp, path)


def load_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing; delete its cache entry to recompute") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is corrupt ({e}); delete its cache entry to recompute") from None


def _json_default(o: Any) -> Any:
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# ---------------------------------------------------------------- artifacts ------------------------

@dataclass(frozen=True)
class Artifact:
    """A finished cache entry: its tensors and its JSON metadata."""

    path: Path

    @property
    def key(self) -> str:
        return self.path.name

    @property
    def meta(self) -> dict[str, Any]:
        return load_json(self.path / META)

    def tensors(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """All tensors, or those under ``prefix`` with the prefix stripped (``"encoder."``)."""
        t = load_tensors(self.path / TENSORS)
        if not prefix:
            return t
        return {k[len(prefix):]: v for k, v in t.items() if k.startswith(prefix)}


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """Inter-process lock so two jobs never compute the same artifact at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _is_complete(path: Path) -> bool:
    return (path / META).is_file()


def get_or_compute(step: str, config: Mapping[str, Any], compute: Callable[[Path, Path], None],
                   modules: tuple[str, ...] = (), force: bool = False) -> Artifact:
    """Return the artifact for (step, config, code of ``modules``), computing it if absent.

    ``compute(out_dir, partial_dir)`` writes its files (``tensors.safetensors`` for tensors, any
    data files) into ``out_dir`` and may keep resumable state in ``partial_dir``, which survives a
    crash. ``meta.json`` is written last, with the config, and marks the entry complete.
    """
    key = make_key(step, config, code_version(*modules) if modules else "")
    root = paths.cache_root() / step
    final = root / key
    with _lock(root / f".{key}.lock"):
        if final.exists() and not force:
            if not _is_complete(final):
                raise CheckpointError(f"cache entry {final} is incomplete; delete it to recompute")
            STATS["hits"] += 1
            return Artifact(final)
        STATS["misses"] += 1
        tmp = root / f"{key}.tmp-{os.getpid()}"
        partial = root / f"{key}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            compute(tmp, partial)
            meta = load_json(tmp / META) if (tmp / META).exists() else {}
            meta.update(step=step, key=key, config=_canonical(config))
            save_json(tmp / META, meta)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(partial, ignore_errors=True)
        return Artifact(final)


def memo(step: str, config: Mapping[str, Any], fn: Callable[[], Any],
         modules: tuple[str, ...] = ()) -> Any:
    """Cache a small JSON-able result (an evaluation, a curve) like an artifact, so a warm rerun of
    a notebook only plots: compute is split from plotting."""

    def compute(out: Path, _partial: Path) -> None:
        save_json(out / META, {"value": fn()})

    return get_or_compute(step, config, compute, modules=modules).meta["value"]


def clear_stale(step: str | None = None) -> int:
    """Remove leftovers of killed runs (``*.tmp-*`` dirs); keep ``.partial`` for resuming."""
    root = paths.cache_root() / step if step else paths.cache_root()
    n = 0
    for p in root.rglob("*.tmp-*") if root.exists() else []:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
            n += 1
    return n
