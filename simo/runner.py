"""Batch regeneration of the study: every notebook, in dependency order, through papermill.

``NOTEBOOKS`` is the one declaration of the pipeline's notebooks and their order, ``DEPENDS`` of
what each needs first; the cache (not these tables) decides what is recomputed, so a run killed at
any moment (even ``kill -9``) resumes when rerun: finished artifacts are reused, half-written ones
are never read. ``jobs=N`` runs up to N notebooks whose dependencies are done side by side and
gives each notebook N job workers (:mod:`simo.jobs`); ``force=True`` recomputes every artifact once.
Executed copies go to ``build/<profile>/`` (ignored by git); figures and results.json go where
:func:`simo.paths.figures_dir` says.
"""
from __future__ import annotations

import json
import os
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
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
    "04_task_relationships": "task relationships read from task vectors, checked by joint training",
    "05_previews": "previews of weighted multi-task finetuning by Bayesian merging vs real runs",
    "06_regimes": "when realignment rivals joint MTL: one knob at a time (profile regime)",
}
# what must have run before (it trains what the notebook reuses); the others are independent
DEPENDS: dict[str, tuple[str, ...]] = {
    "00_data_and_tasks": (),
    "01_pretrain_and_finetune": ("00_data_and_tasks",),
    "02_misalignment": ("01_pretrain_and_finetune",),
    "03_realignment": ("01_pretrain_and_finetune",),
    "04_task_relationships": ("01_pretrain_and_finetune",),
    "05_previews": ("01_pretrain_and_finetune",),  # the pretrained encoder
    "06_regimes": (),  # trains its own runs at every knob value
}
# notebooks that a whole-study run includes only where the profile gives them something to do
# (the regime study runs where ``regime.knobs`` is set: smoke, and ``make regimes``)
NEEDS: dict[str, tuple[str, str]] = {"06_regimes": ("regime", "knobs")}


@dataclass
class RunRecord:
    notebook: str
    status: str
    seconds: float
    figures: int
    error: str = ""
    hits: int = 0  # cache entries reused
    misses: int = 0  # cache entries computed


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
    hits, misses = cache_events(notebook)
    return RunRecord(notebook, status, time.perf_counter() - t0, changed, error, hits, misses)


def cache_events(notebook: str) -> tuple[int, int]:
    """(hits, misses) of the cache in this run (``SIMO_RUN``) by ``notebook`` and its jobs."""
    from simo.cache import events_file

    run = os.environ.get("SIMO_RUN")
    path = events_file(run) if run else None
    if path is None or not path.is_file():
        return 0, 0
    hits = misses = 0
    for line in path.read_text().splitlines():
        try:
            e = json.loads(line)
        except ValueError:  # a line cut by a kill
            continue
        if e.get("nb") == notebook:
            hits += bool(e["hit"])
            misses += not e["hit"]
    return hits, misses


def _mtimes(d: Path) -> dict[Path, float]:
    return {p: p.stat().st_mtime for p in d.glob("*")} if d.is_dir() else {}


def run_all(profile: str, only: Sequence[str] | None = None,
            params: Mapping[str, Any] | None = None, jobs: int | None = None,
            force: bool = False) -> list[RunRecord]:
    """Run the selected notebooks, each after what it depends on; stop launching at a failure.

    ``jobs`` (N > 1): up to N independent notebooks at once, and ``jobs.workers = N`` inside each.
    ``force``: every cache entry is recomputed once in this run (later reads in the run reuse it).
    """
    if profile not in available_profiles():
        raise ConfigError(one_of(profile, available_profiles(), "profile"))
    if jobs is not None and jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {jobs}")
    chosen = [nb for nb in select(only) if only or _applies(nb, profile)]
    params = dict(params or {})
    if jobs is not None:
        params["overrides"] = {**(params.get("overrides") or {}), "jobs.workers": jobs}
    saved = {k: os.environ.get(k) for k in ("SIMO_RUN", "SIMO_FORCE")}
    os.environ["SIMO_RUN"] = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    os.environ.pop("SIMO_FORCE", None)
    if force:
        os.environ["SIMO_FORCE"] = "1"
    try:
        return _run_in_order(profile, chosen, params, jobs or 1)
    finally:  # the kernels inherited them; this process goes back to how it was
        from simo.cache import events_file

        events_file(os.environ["SIMO_RUN"]).unlink(missing_ok=True)  # counted in the records
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _applies(notebook: str, profile: str) -> bool:
    """Whether ``profile`` sets what ``notebook`` needs (see ``NEEDS``); run by name regardless."""
    from simo.config import load_profile

    if notebook not in NEEDS:
        return True
    section, key = NEEDS[notebook]
    if getattr(getattr(load_profile(profile), section), key):
        return True
    print(f"[simo] skipping {notebook}: profile {profile!r} sets no {section}.{key} "
          f"(run it with --profile regime --only {notebook[:2]}, i.e. `make regimes`)", flush=True)
    return False


def _run_in_order(profile: str, chosen: list[str], params: Mapping[str, Any],
                  jobs: int) -> list[RunRecord]:
    """Launch each notebook once its dependencies are done, at most ``jobs`` at a time."""
    records: dict[str, RunRecord] = {}
    lock = threading.Lock()

    def one(nb: str) -> RunRecord:
        with lock:
            print(f"[simo] running {nb} ({profile}) ...", flush=True)
        rec = run_notebook(nb, profile, params)
        with lock:
            print(f"[simo] {nb}: {rec.status} in {rec.seconds:.0f} s", flush=True)
        return rec

    todo = list(chosen)
    with ThreadPoolExecutor(jobs) as pool:
        running: dict[Any, str] = {}
        while todo or running:
            failed = any(r.status != "ok" for r in records.values())
            ready = [] if failed else [nb for nb in todo if all(
                d in records or d not in chosen for d in DEPENDS.get(nb, ()))]
            for nb in ready[: jobs - len(running)]:
                todo.remove(nb)
                running[pool.submit(one, nb)] = nb
            if not running:
                break
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for f in done:
                records[running.pop(f)] = f.result()
    return [records[nb] for nb in chosen if nb in records]


def summary(records: Sequence[RunRecord]) -> str:
    lines = [f"{'notebook':<28} {'status':<7} {'wall s':>7} {'figures':>8} {'cache hits':>11} "
             f"{'computed':>9}"]
    for r in records:
        lines.append(f"{r.notebook:<28} {r.status:<7} {r.seconds:>7.1f} {r.figures:>8} "
                     f"{r.hits:>11} {r.misses:>9}")
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


__all__ = ["DEPENDS", "NOTEBOOKS", "RunRecord", "run_all", "run_notebook", "select", "summary", "SimoError"]
