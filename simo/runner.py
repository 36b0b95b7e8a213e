"""Batch regeneration of the study: every notebook, in dependency order, through papermill.

``NOTEBOOKS`` is the one declaration of the pipeline's notebooks and their order, ``DEPENDS`` of
what each needs first; the cache (not these tables) decides what is recomputed, so a run killed at
any moment (even ``kill -9``) resumes when rerun: finished artifacts are reused, half-written ones
are never read. ``jobs=N`` runs up to N notebooks whose dependencies are done side by side and
gives each notebook N job workers (:mod:`simo.jobs`); ``force=True`` recomputes every artifact once.
Parameters are checked against each notebook's declared types (:mod:`simo.params`) before any
kernel starts. A run at the profile's exact defaults writes the gallery: figures and results.json
where :func:`simo.paths.figures_dir` says and, for the study's own profiles, a cleaned executed copy
in ``executed/`` (:mod:`simo.site`). Any other parameters write everything under
``build/runs/<id>/``, and the runner says so. While a notebook runs, a heartbeat line every
``HEARTBEAT`` seconds says which cell runs, for how long, the ETA from the last run's timings and
the newest progress bar inside the kernel.
"""
from __future__ import annotations

import itertools
import json
import os
import re
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from simo import params as params_mod
from simo import paths
from simo.config import available_profiles
from simo.errors import ConfigError, SimoError, one_of
from simo.progress import BAR_LINE

HEARTBEAT = 10.0  # seconds between progress lines of a running notebook
KERNEL = "python3"  # this interpreter's own kernel: always the right one, registered or not
_RUN_IDS = itertools.count()  # two runs started in the same second still get their own id

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
    figures_dir: Path | None = None  # where its figures and results.json went


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


def check_parameters(notebook: str, params: Mapping[str, Any], text: bool = False
                     ) -> dict[str, Any]:
    """The parameters checked against the notebook's declarations (one-line error), normalized;
    ``text=True`` parses command-line strings by the declared types."""
    return params_mod.validate(notebook, params, text=text)


def destination(notebook: str, profile: str, params: Mapping[str, Any]) -> tuple[str | None, Path]:
    """(run id or None for a default run, figure directory) of a run with these parameters."""
    run, _ = params_mod.run_of(notebook, profile, params)
    return run, paths.figures_dir(profile, notebook, run)


def run_notebook(notebook: str, profile: str, params: Mapping[str, Any] | None = None,
                 out_dir: Path | None = None, progress: bool = True,
                 text: bool = False) -> RunRecord:
    """Execute one notebook with papermill; a failure becomes a record naming the failing cell.

    A default run of a gallery profile also publishes its cleaned copy to ``executed/``.
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    params = check_parameters(notebook, {"profile": profile, **(params or {})}, text=text)
    profile = params["profile"]  # `-p profile X` wins over the positional default, everywhere
    run, fig_dir = destination(notebook, profile, params)
    out_dir = out_dir or (paths.RUNS / run if run else paths.BUILD / profile)
    out_dir.mkdir(parents=True, exist_ok=True)
    if run:
        _say(f"{notebook}: parameters differ from the defaults: writing under "
             f"{_rel(fig_dir.parent)}/ (figures/ keeps the default run)")
    before = _mtimes(fig_dir)
    t0 = time.perf_counter()
    status, error = "ok", ""
    out = out_dir / f"{notebook}.ipynb"
    watch = Watch(notebook, profile, echo=progress)
    ours = "SIMO_PROGRESS" not in os.environ  # run_all sets it once, before its threads start
    os.environ.setdefault("SIMO_PROGRESS", "text")  # the kernel inherits it: text bars for Watch
    try:
        with watch:
            papermill.execute_notebook(str(paths.NOTEBOOKS / f"{notebook}.ipynb"), str(out),
                                       parameters=params, cwd=str(paths.NOTEBOOKS),
                                       kernel_name=KERNEL, engine_name="simo", watch=watch,
                                       progress_bar=False, log_output=False)
    except PapermillExecutionError as e:
        status = "failed"
        error = f"cell {e.exec_count}: {e.ename}: {str(e.evalue).splitlines()[0] if e.evalue else ''}"
    finally:
        if ours:
            os.environ.pop("SIMO_PROGRESS", None)
    if status == "ok":
        watch.save_timings()
        if run is None and profile in paths.TOP_LEVEL:
            from simo import site

            site.publish(out, paths.EXECUTED / out.name)
    after = _mtimes(fig_dir)
    changed = sum(1 for p, m in after.items() if before.get(p) != m)
    hits, misses = cache_events(notebook)
    return RunRecord(notebook, status, time.perf_counter() - t0, changed, error, hits, misses,
                     fig_dir)


def _rel(p: Path) -> str:
    try:
        return str(p.relative_to(paths.ROOT))
    except ValueError:
        return str(p)


_PRINT = threading.Lock()


def _say(line: str) -> None:
    with _PRINT:
        print(f"[simo] {line}", flush=True)


class Watch:
    """Follows one notebook's execution: the cell running, the newest progress-bar line on the
    kernel's stderr, and a heartbeat line every ``HEARTBEAT`` s with an ETA from the last run's
    per-cell timings (``<cache>/timings/<profile>/<notebook>.json``)."""

    def __init__(self, notebook: str, profile: str, echo: bool = True) -> None:
        self.notebook, self.profile, self.echo = notebook, profile, echo
        self.cell, self.n_cells, self.bar = -1, 0, ""
        self.t0 = self.cell_t0 = time.perf_counter()
        self.seconds: dict[int, float] = {}
        self.last = self._load()
        self._stop = threading.Event()

    @property
    def timings_file(self) -> Path:
        return paths.cache_root() / "timings" / self.profile / f"{self.notebook}.json"

    def _load(self) -> list[float] | None:
        try:
            return [float(x) for x in json.loads(self.timings_file.read_text())]
        except (OSError, ValueError, TypeError):
            return None

    def save_timings(self) -> None:
        from simo.cache import save_json

        save_json(self.timings_file, [round(self.seconds.get(i, 0.0), 2) for i in range(self.n_cells)])

    # papermill hooks (see _Engine) -------------------------------------------------------------
    def started(self, index: int, n_cells: int) -> None:
        self.cell, self.n_cells, self.cell_t0, self.bar = index, n_cells, time.perf_counter(), ""

    def finished(self, index: int) -> None:
        self.seconds[index] = time.perf_counter() - self.cell_t0

    def write(self, text: str) -> int:  # the kernel's stderr: keep the newest progress-bar line
        for part in reversed(re.split(r"[\r\n]+", text)):
            if BAR_LINE.search(part):
                self.bar = part.strip()
                break
        return len(text)

    def flush(self) -> None:
        pass

    # heartbeat ----------------------------------------------------------------------------------
    def eta(self) -> float | None:
        """Seconds left, by the last run's timings of the cells still to come."""
        if not self.last or len(self.last) != self.n_cells or self.cell < 0:
            return None
        in_cell = time.perf_counter() - self.cell_t0
        return max(self.last[self.cell] - in_cell, 0.0) + sum(self.last[self.cell + 1:])

    def line(self) -> str:
        eta = self.eta()
        text = (f"{self.notebook}: cell {self.cell + 1}/{self.n_cells}, "
                f"{_clock(time.perf_counter() - self.t0)} elapsed, "
                + (f"ETA {_clock(eta)} (last run's timings)" if eta is not None
                   else "no ETA yet (first run at this profile)"))
        return text + (f" | {self.bar}" if self.bar else "")

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT):
            if self.echo and self.cell >= 0:
                _say(self.line())

    def __enter__(self) -> "Watch":
        threading.Thread(target=self._beat, daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


def _register_engine() -> None:
    """papermill's nbclient engine, with the cell hooks and stderr relay that ``Watch`` reads."""
    from papermill.engines import NBClientEngine, papermill_engines

    class _Engine(NBClientEngine):
        @classmethod
        def execute_managed_notebook(cls, nb_man: Any, kernel_name: str, watch: Watch | None = None,
                                     **kwargs: Any) -> Any:
            if watch is not None:
                start, done = nb_man.cell_start, nb_man.cell_complete
                n = len(nb_man.nb.cells)

                def cell_start(cell: Any, cell_index: int | None = None, **kw: Any) -> Any:
                    watch.started(cell_index or 0, n)
                    return start(cell, cell_index, **kw)

                def cell_complete(cell: Any, cell_index: int | None = None, **kw: Any) -> Any:
                    watch.finished(cell_index or 0)
                    return done(cell, cell_index, **kw)

                nb_man.cell_start, nb_man.cell_complete = cell_start, cell_complete
                kwargs["stderr_file"] = watch
            return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)

    papermill_engines.register("simo", _Engine)


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
            force: bool = False, text: bool = False) -> list[RunRecord]:
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
    for nb in chosen:  # every value checked before any kernel starts
        check_parameters(nb, {"profile": profile, **params}, text=text)
    if jobs is not None:
        params["overrides"] = {**(params.get("overrides") or {}), "jobs.workers": jobs}
    saved = {k: os.environ.get(k) for k in ("SIMO_RUN", "SIMO_FORCE", "SIMO_PROGRESS")}
    os.environ["SIMO_RUN"] = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{next(_RUN_IDS)}"
    os.environ["SIMO_PROGRESS"] = "text"
    os.environ.pop("SIMO_FORCE", None)
    if force:
        os.environ["SIMO_FORCE"] = "1"
    try:
        return _run_in_order(profile, chosen, params, jobs or 1, text)
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
                  jobs: int, text: bool = False) -> list[RunRecord]:
    """Launch each notebook once its dependencies are done, at most ``jobs`` at a time."""
    records: dict[str, RunRecord] = {}

    def one(nb: str) -> RunRecord:
        _say(f"running {nb} ({profile}) ...")
        rec = run_notebook(nb, profile, params, text=text)
        _say(f"{nb}: {rec.status} in {rec.seconds:.0f} s")
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
    """A profile override's value (``-o key value``): YAML (``3``, ``0.5``, ``null``, ``[a, b]``)."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


_register_engine()
__all__ = ["DEPENDS", "NOTEBOOKS", "RunRecord", "run_all", "run_notebook", "select", "summary", "SimoError"]
