"""Batch regeneration of the study: every notebook, in order, through papermill.

``NOTEBOOKS`` is the one declaration of the pipeline's notebooks and their order; the cache (not
this table) decides what is recomputed. Executed copies go to ``build/<profile>/`` (ignored by
git); figures and results.json go where :func:`simo.paths.figures_dir` says.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from simo import paths
from simo.config import available_profiles
from simo.errors import ConfigError, SimoError, one_of

# name -> one line on what it shows. Order = execution order (later notebooks reuse earlier work).
NOTEBOOKS: dict[str, str] = {
    "00_data_and_tasks": "the synthetic scenes and every label",
    "01_pretrain_and_finetune": "pretraining, single-task finetuning, pretrained vs scratch",
    "02_misalignment": "merging encoders, the drop with original heads, and its diagnosis",
    "03_realignment": "head and representation realignment vs joint MTL, with costs and seeds",
}


@dataclass
class RunRecord:
    notebook: str
    status: str
    seconds: float
    figures: int
    error: str = ""


def select(only: Sequence[str] | None) -> list[str]:
    """Notebooks matching ``only`` (full names or prefixes such as ``01``), in pipeline order."""
    if not only:
        return list(NOTEBOOKS)
    chosen = []
    for o in only:
        hits = [n for n in NOTEBOOKS if n == o or n.startswith(o)]
        if not hits:
            raise ConfigError(one_of(o, list(NOTEBOOKS), "notebook"))
        chosen += [h for h in hits if h not in chosen]
    return [n for n in NOTEBOOKS if n in chosen]


def check_parameters(notebook: str, params: Mapping[str, Any]) -> None:
    """Reject parameters that the notebook's ``parameters`` cell does not declare."""
    import papermill

    declared = papermill.inspect_notebook(str(paths.NOTEBOOKS / f"{notebook}.ipynb"))
    unknown = sorted(set(params) - set(declared))
    if unknown:
        raise ConfigError(f"unknown parameter {unknown[0]!r} for notebook {notebook}; valid: "
                          f"{', '.join(declared)}")


def run_notebook(notebook: str, profile: str, params: Mapping[str, Any] | None = None,
                 out_dir: Path | None = None, progress: bool = False) -> RunRecord:
    """Execute one notebook with papermill; a failure becomes a record naming the failing cell."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    params = {"profile": profile, **(params or {})}
    check_parameters(notebook, params)
    out_dir = out_dir or paths.BUILD / profile
    out_dir.mkdir(parents=True, exist_ok=True)
    fig_dir = paths.figures_dir(profile, notebook)
    before = _mtimes(fig_dir)
    t0 = time.perf_counter()
    status, error = "ok", ""
    try:
        papermill.execute_notebook(str(paths.NOTEBOOKS / f"{notebook}.ipynb"),
                                   str(out_dir / f"{notebook}.ipynb"), parameters=params,
                                   cwd=str(paths.NOTEBOOKS), kernel_name="python3",
                                   progress_bar=progress, log_output=False)
    except PapermillExecutionError as e:
        status = "failed"
        error = f"cell {e.exec_count}: {e.ename}: {str(e.evalue).splitlines()[0] if e.evalue else ''}"
    after = _mtimes(fig_dir)
    changed = sum(1 for p, m in after.items() if before.get(p) != m)
    return RunRecord(notebook, status, time.perf_counter() - t0, changed, error)


def _mtimes(d: Path) -> dict[Path, float]:
    return {p: p.stat().st_mtime for p in d.glob("*")} if d.is_dir() else {}


def run_all(profile: str, only: Sequence[str] | None = None,
            params: Mapping[str, Any] | None = None) -> list[RunRecord]:
    """Run the selected notebooks in order; stop at the first failure."""
    if profile not in available_profiles():
        raise ConfigError(one_of(profile, available_profiles(), "profile"))
    records = []
    for nb in select(only):
        print(f"[simo] running {nb} ({profile}) ...", flush=True)
        rec = run_notebook(nb, profile, params)
        records.append(rec)
        print(f"[simo] {nb}: {rec.status} in {rec.seconds:.0f} s", flush=True)
        if rec.status != "ok":
            break
    return records


def summary(records: Sequence[RunRecord]) -> str:
    lines = [f"{'notebook':<28} {'status':<7} {'wall s':>7} {'figures':>8}"]
    for r in records:
        lines.append(f"{r.notebook:<28} {r.status:<7} {r.seconds:>7.1f} {r.figures:>8}")
    lines.append(f"{'total':<28} {'':<7} {sum(r.seconds for r in records):>7.1f}")
    for r in records:
        if r.error:
            lines.append(f"error: {r.notebook} failed in {r.error}")
    return "\n".join(lines)


def parse_value(text: str) -> Any:
    """Papermill-style ``-p key value``: YAML scalars (``3``, ``0.5``, ``null``, ``[a, b]``)."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


__all__ = ["NOTEBOOKS", "RunRecord", "run_all", "run_notebook", "select", "summary", "SimoError"]
