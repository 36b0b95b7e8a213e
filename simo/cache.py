"""Content-addressed artifacts: safetensors + JSON, written atomically, never pickled.

An artifact is a directory ``<cache>/<step>/<key>/`` holding ``tensors.safetensors`` (any number
of named tensors) and ``meta.json``. The key hashes the step's config, the keys of the artifacts it
was computed from and the source code of the module that computes it and of every ``simo``
module that module imports (:func:`closure`), so editing ``train.py`` reruns training but not
rendering. A computation writes into ``<key>.tmp-<pid>`` and is renamed
into place only when complete: a killed run leaves no half-written artifact. Long computations keep
resumable checkpoints in ``<key>.partial/`` (atomic files too), removed once the artifact lands.
"""
from __future__ import annotations

import ast
import contextlib
import fcntl
import functools
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from simo import paths
from simo.errors import CheckpointError

TENSORS = "tensors.safetensors"
CHECKSUM = "simo_sha256"  # safetensors header metadata: digest of the tensors, checked on load
META = "meta.json"
STATS = {"hits": 0, "misses": 0}  # this process's hits and misses
EVENTS = "events"  # under a runner (SIMO_RUN set): events/<run>.jsonl, a line per hit or miss


def _canonical(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(obj.items())}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if isinstance(obj, float):
        return repr(obj)
    return obj


NEUTRAL = ("simo.progress", "simo.errors")  # cannot change a result: progress bars, error texts


def _module_file(module: str, root: Path) -> Path | None:
    """The source file of a dotted ``simo`` module under ``root`` (a package's ``__init__``)."""
    base = root.joinpath(*module.split("."))
    for f in (base.with_suffix(".py"), base / "__init__.py"):
        if f.is_file():
            return f
    return None


def _imports(module: str, root: Path) -> set[str]:
    """The ``simo`` modules that ``module`` imports anywhere in its source (inside functions too),
    with the packages they sit in (importing ``simo.a.b`` runs ``simo/a/__init__.py``)."""
    tree = ast.parse(_module_file(module, root).read_bytes())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}  # a submodule, if it is one
    out = set()
    for name in found:
        parts = name.split(".")
        out |= {".".join(parts[:i]) for i in range(2, len(parts) + 1) if parts[0] == "simo"}
    return {m for m in out if _module_file(m, root) is not None}


@functools.lru_cache(maxsize=None)
def closure(module: str, root: Path | None = None) -> tuple[str, ...]:
    """``module`` and every ``simo`` module it imports, transitively (less :data:`NEUTRAL`).

    A cached step's key hashes the source of this closure: editing any function that the step
    could run changes the key, and nobody keeps a list of modules by hand.
    """
    root = root or paths.ROOT
    seen, todo = set(), [module]
    while todo:
        m = todo.pop()
        if m in seen or m in NEUTRAL:
            continue
        seen.add(m)
        todo += sorted(_imports(m, root) - seen)
    return tuple(sorted(seen))


def code_version(module: str, root: Path | None = None) -> str:
    """Hash of the source of ``module``'s :func:`closure` (``"simo.steps"``); ``""`` for code
    outside the package (a test's own step), which has no source to follow."""
    root = root or paths.ROOT
    if not module.startswith("simo.") or _module_file(module, root) is None:
        return ""
    h = hashlib.sha256()
    for m in closure(module, root):
        h.update(m.encode())
        h.update(_module_file(m, root).read_bytes())
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
    cpu = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    save_file(cpu, str(tmp), metadata={**(metadata or {}), CHECKSUM: digest(cpu)})
    os.replace(tmp, path)


def digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of names, dtypes, shapes and bytes: what a flipped bit or a swapped file changes."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file; a truncated, corrupt or (for files written by :func:`save_tensors`,
    which record a checksum) bit-flipped file is a one-line CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is missing; delete its cache entry to recompute")
    try:
        with safe_open(str(path), "pt") as f:
            recorded = (f.metadata() or {}).get(CHECKSUM)
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({msg}); delete it "
                              "(or its cache entry) to recompute") from None
    if recorded is not None and digest(tensors) != recorded:
        raise CheckpointError(f"checkpoint {path} fails its checksum (bit-flipped or overwritten); "
                              "delete it (or its cache entry) to recompute")
    return tensors


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
                   force: bool = False, code: str | None = None) -> Artifact:
    """Return the artifact for (step, config, code), computing it if absent.

    The code is the source of the module that defines ``compute`` (or the module named ``code``)
    and of everything it imports (:func:`closure`).

    ``compute(out_dir, partial_dir)`` writes its files (``tensors.safetensors`` for tensors, any
    data files) into ``out_dir`` and may keep resumable state in ``partial_dir``, which survives a
    crash. ``meta.json`` is written last, with the config, and marks the entry complete.
    """
    key = make_key(step, config, code_version(code or compute.__module__))
    root = paths.cache_root() / step
    final = root / key
    run = os.environ.get("SIMO_RUN", "")
    with _lock(root / f".{key}.lock"):
        if final.exists() and not (force or _forced(final, run)):
            if not _is_complete(final):
                raise CheckpointError(f"cache entry {final} is incomplete; delete it to recompute")
            STATS["hits"] += 1
            _record(step, True)
            return Artifact(final)
        STATS["misses"] += 1
        _record(step, False)
        tmp = root / f"{key}.tmp-{os.getpid()}"
        partial = root / f"{key}.partial"
        for stale in root.glob(f"{key}.tmp-*"):  # we hold the key's lock: their writers are dead
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            compute(tmp, partial)
            meta = load_json(tmp / META) if (tmp / META).exists() else {}
            meta.update(step=step, key=key, config=_canonical(config), run=run)
            save_json(tmp / META, meta)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(partial, ignore_errors=True)
        return Artifact(final)


def _forced(entry: Path, run: str) -> bool:
    """``SIMO_FORCE`` (the runner's ``--force``): recompute entries not yet computed in this run."""
    if not (run and os.environ.get("SIMO_FORCE")):
        return False
    try:
        return load_json(entry / META).get("run") != run
    except (OSError, ValueError, CheckpointError):
        return True


def _record(step: str, hit: bool) -> None:
    """Append a hit/miss event for the runner's summary (only inside a runner's run)."""
    run = os.environ.get("SIMO_RUN")
    if not run:
        return
    line = json.dumps({"nb": os.environ.get("SIMO_NOTEBOOK", ""), "step": step, "hit": hit})
    path = events_file(run)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:  # one short O_APPEND write per event: safe across processes
        fh.write(line + "\n")


def events_file(run: str) -> Path:
    """The hit/miss log of one runner run (the runner reads it, then removes it)."""
    return paths.cache_root() / EVENTS / f"{run}.jsonl"


def memo(step: str, config: Mapping[str, Any], fn: Callable[[], Any]) -> Any:
    """Cache a small JSON-able result (an evaluation, a curve) like an artifact, so a warm rerun of
    a notebook only plots: compute is split from plotting."""

    def compute(out: Path, _partial: Path) -> None:
        save_json(out / META, {"value": fn()})

    return get_or_compute(step, config, compute, code=fn.__module__).meta["value"]


def clear_stale(step: str | None = None) -> int:
    """Remove leftovers of killed runs (``*.tmp-*`` dirs); keep ``.partial`` for resuming."""
    root = paths.cache_root() / step if step else paths.cache_root()
    n = 0
    for p in root.rglob("*.tmp-*") if root.exists() else []:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
            n += 1
    return n
