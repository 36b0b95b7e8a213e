"""A notebook's parameters: declared once, in its ``parameters`` cell, with a type and a comment.

Every notebook's first code cell is tagged ``parameters`` and reads, line by line,
``name: type = default  # one line of documentation``. This module reads that cell (with
:mod:`ast`, never by running it) so that, before any kernel starts:

* ``python -m simo params 02`` can list the knobs, their defaults and docs;
* a value given on the command line (always text) is parsed by the declared type; a list is
  written ``a,b,c`` there, and is a Python list everywhere else;
* a bad value (wrong type, unknown task or merge method, typo in a choice) fails with one line;
* the run knows which values differ from the defaults: only a run at the exact defaults writes the
  committed gallery (``figures/``, ``executed/``); any other goes to ``build/runs/<id>/``.
"""
from __future__ import annotations

import ast
import functools
import hashlib
import io
import json
import re
import tokenize
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from simo import paths
from simo.errors import ConfigError, one_of

# what changes where or how a run executes, never what it computes, so a run with them still
# counts as a default run: overrides of the ``jobs`` section (workers, executor, SLURM settings;
# the cache makes results independent of them) and ``data_root`` (where a real dataset lies on
# this machine: a gpu-<dataset> profile's gallery needs it, and every machine spells it its own way)
EXECUTION_ONLY_PREFIXES = ("jobs.",)
LOCATION_PARAMS = frozenset({"data_root"})
_SCALARS: dict[str, type] = {"int": int, "float": float, "str": str, "bool": bool, "dict": dict}
_NONE_TEXT = ("none", "null", "~")


@dataclass(frozen=True)
class Param:
    """One declared parameter: ``name: type = default  # doc``."""
    name: str
    type: str  # as written, e.g. "int", "list[str] | None"
    default: Any
    doc: str

    @property
    def optional(self) -> bool:
        return self.type.replace(" ", "").endswith("|None")

    @property
    def base(self) -> str:
        """The type without ``| None``: ``int``, ``list[int]``, ..."""
        return self.type.replace(" ", "").removesuffix("|None")


def notebook_path(notebook: str) -> Path:
    return paths.NOTEBOOKS / f"{notebook}.ipynb"


@functools.lru_cache(maxsize=None)
def _declared(notebook: str, mtime: float) -> dict[str, Param]:
    import nbformat

    nb = nbformat.read(notebook_path(notebook), as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    if len(cells) != 1:
        raise ConfigError(f"notebook {notebook} must have exactly one cell tagged 'parameters', "
                          f"has {len(cells)}")
    return parse_cell(cells[0].source, notebook)


def declared(notebook: str) -> dict[str, Param]:
    """The notebook's parameters, in the order of its ``parameters`` cell."""
    path = notebook_path(notebook)
    if not path.is_file():
        from simo.runner import NOTEBOOKS

        raise ConfigError(one_of(notebook, list(NOTEBOOKS), "notebook"))
    return _declared(notebook, path.stat().st_mtime)


def parse_cell(source: str, where: str = "parameters cell") -> dict[str, Param]:
    """Parse ``name: type = default  # doc`` lines; anything else in the cell is an error."""
    comments = {tok.start[0]: tok.string.lstrip("#").strip()
                for tok in tokenize.generate_tokens(io.StringIO(source).readline)
                if tok.type == tokenize.COMMENT}
    out: dict[str, Param] = {}
    for node in ast.parse(source).body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and node.value is not None):
            raise ConfigError(f"{where}: line {node.lineno} is not `name: type = default  # doc`")
        name, kind = node.target.id, ast.unparse(node.annotation)
        try:
            default = ast.literal_eval(node.value)
        except ValueError:
            raise ConfigError(f"{where}: the default of {name!r} must be a literal") from None
        p = Param(name, kind, default, comments.get(node.lineno, ""))
        _check_type(p.base, p.name)
        out[name] = p
    return out


def _check_type(base: str, name: str) -> None:
    m = re.fullmatch(r"list\[(\w+)\]", base)
    if base not in _SCALARS and not (m and m.group(1) in ("int", "float", "str")):
        raise ConfigError(f"parameter {name!r}: unsupported type {base!r} (use int, float, str, "
                          "bool, dict, list[int|float|str], optionally `| None`)")


# ----------------------------------------------------------------------------- values

def from_text(p: Param, text: str) -> Any:
    """A command-line value (text) as the parameter's type: ``3``, ``0.5``, ``a,b``, ``null``."""
    if p.optional and text.strip().lower() in _NONE_TEXT:
        return None
    if p.base.startswith("list["):
        if text.strip().startswith("["):
            return coerce(p, _yaml(text))
        items = [s.strip() for s in text.split(",") if s.strip()]
        return coerce(p, items if p.base == "list[str]" else [_yaml(s) for s in items])
    return coerce(p, text if p.base == "str" else _yaml(text))


def _yaml(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def coerce(p: Param, value: Any) -> Any:
    """``value`` checked against the declared type (ints are accepted for floats)."""
    if value is None:
        if p.optional:
            return None
        raise ConfigError(f"parameter {p.name!r} may not be None ({p.type})")
    m = re.fullmatch(r"list\[(\w+)\]", p.base)
    if m:
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"parameter {p.name!r} must be a list ({p.type}), e.g. "
                              f"{_example(m.group(1))}; on the command line: -p {p.name} "
                              f"{','.join(map(str, _example(m.group(1))))}")
        return [_scalar(p, m.group(1), v) for v in value]
    return _scalar(p, p.base, value)


def _example(kind: str) -> list:
    return {"int": [0, 1], "float": [0.5, 1.0], "str": ["depth", "normals"]}[kind]


def _scalar(p: Param, kind: str, v: Any) -> Any:
    want = _SCALARS[kind]
    if kind == "float" and isinstance(v, int) and not isinstance(v, bool):
        return float(v)
    if isinstance(v, want) and not (want is int and isinstance(v, bool)):
        return v
    raise ConfigError(f"parameter {p.name!r} must be {p.type}, got {v!r}")


# ----------------------------------------------------------------------------- choices

def _tasks() -> tuple[str, ...]:
    from simo.tasks import TASK_NAMES

    return TASK_NAMES


def _methods() -> list[str]:
    from simo import merging

    return sorted(merging.METHODS)


def _conventions() -> tuple[str, ...]:
    from simo.tasks import DELTA_CONVENTIONS

    return DELTA_CONVENTIONS


def _weightings() -> tuple[str, ...]:
    from simo.train import WEIGHTINGS

    return WEIGHTINGS


def _datasets() -> tuple[str, ...]:
    from simo.config import DATASETS

    return DATASETS


def _estimators() -> tuple[str, ...]:
    from simo.config import SG_ESTIMATORS

    return SG_ESTIMATORS


def _profiles() -> list[str]:
    from simo.config import available_profiles

    return available_profiles()


# parameter name -> where its allowed values come from (the registries, never a copy here)
CHOICES: dict[str, Callable[[], Any]] = {
    "profile": _profiles, "tasks": _tasks, "methods": _methods, "convention": _conventions,
    "weighting": _weightings, "dataset": _datasets, "sg_estimator": _estimators,
}


def validate(notebook: str, values: Mapping[str, Any], text: bool = False) -> dict[str, Any]:
    """Every value checked and normalized: unknown names, types, choices, the overrides and the
    profile they apply to. ``text=True``: the values are command-line strings."""
    decl = declared(notebook)
    for name in values:
        if name not in decl:
            raise ConfigError(f"unknown parameter {name!r} for notebook {notebook}; valid: "
                              f"{', '.join(decl)}")
    out = {n: (from_text(decl[n], v) if text and isinstance(v, str) else coerce(decl[n], v))
           for n, v in values.items()}
    for name, value in out.items():
        if name in CHOICES and value is not None:
            allowed = list(CHOICES[name]())
            for v in value if isinstance(value, list) else [value]:
                if v not in allowed:
                    raise ConfigError(one_of(v, allowed, f"value for {name}"))
    full = {**defaults(notebook), **out}
    _check_profile(full)
    return out


def _check_profile(full: Mapping[str, Any]) -> None:
    """The overrides and knob names must fit the profile (cheap: YAML only, nothing trains)."""
    from simo.config import load_profile

    prof = load_profile(full["profile"], dict(full.get("overrides") or {}))
    knobs = full.get("knobs")
    if knobs:
        names = [k.name for k in prof.regime.knobs]
        for k in knobs:
            if k not in names:
                raise ConfigError(one_of(k, names, f"knob of profile {prof.name}"))


def defaults(notebook: str) -> dict[str, Any]:
    return {n: p.default for n, p in declared(notebook).items()}


def changes(notebook: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """The values that differ from the declared defaults (the profile aside); what only changes
    where or how the run executes (``jobs.*`` overrides, ``data_root``) does not count."""
    out = {}
    for name, default in defaults(notebook).items():
        if name == "profile" or name in LOCATION_PARAMS or name not in values:
            continue
        v = values[name]
        if name == "overrides":
            v = {k: x for k, x in (v or {}).items() if not k.startswith(EXECUTION_ONLY_PREFIXES)}
            default = dict(default or {})
        if v != default:
            out[name] = v
    return out


def run_id(profile: str, changed: Mapping[str, Any]) -> str:
    """A readable, stable folder name for a non-default run: ``tiny-seed1`` or, when the
    parameters do not fit in a short name, ``tiny-<hash>``."""
    def short(v: Any) -> str:
        if isinstance(v, list):
            return "+".join(map(str, v))
        return str(v)

    text = "-".join(f"{k}{short(v)}" for k, v in sorted(changed.items())
                    if not isinstance(v, dict))
    text = re.sub(r"[^A-Za-z0-9_.+=]", "", text)
    if any(isinstance(v, dict) for v in changed.values()) or len(text) > 60:
        blob = json.dumps(changed, sort_keys=True, default=str).encode()
        text = hashlib.sha256(blob).hexdigest()[:10]
    return f"{profile}-{text}"


def run_of(notebook: str, profile: str, values: Mapping[str, Any]
           ) -> tuple[str | None, dict[str, Any]]:
    """(run id, the changed values) of a run with these values; (None, {}) for a default run.
    The runner and the kernel both ask here, so they always agree on where a run writes."""
    changed = changes(notebook, values)
    return (run_id(profile, changed) if changed else None), changed


def describe(notebook: str) -> str:
    """``python -m simo params NB``: one line per parameter."""
    decl = declared(notebook)
    width = max(len(n) for n in decl)
    tw = max(len(p.type) for p in decl.values())
    lines = [f"{notebook}: parameters (command line: -p NAME VALUE; lists as a,b,c)"]
    for p in decl.values():
        lines.append(f"  {p.name:<{width}}  {p.type:<{tw}}  = {p.default!r:<22}  {p.doc}")
    return "\n".join(lines)
