"""The one place that spells paths. Notebooks and modules ask here; nothing else builds a path.

``SIMO_CACHE`` moves the artifact cache (tests point it at a temporary directory).
"""
from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROFILES = ROOT / "profiles"
NOTEBOOKS = ROOT / "notebooks"
FIGURES = ROOT / "figures"
BUILD = ROOT / "build"
WEIGHTS = ROOT / "weights"  # released encoder weights (the embedded foundation θ0) + model cards
EXECUTED = ROOT / "executed"  # the default run's executed notebooks, cleaned (committed)
RUNS = BUILD / "runs"  # every run at non-default parameters: build/runs/<id>/<notebook>/


def repo_file(path: str | Path) -> Path:
    """A profile's file setting (``model.weights``, ``foundation.out``): relative to the repo root,
    so a profile names the same file from any working directory."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else ROOT / p


def cache_root() -> Path:
    """Artifact cache: ``$SIMO_CACHE`` if set, else ``<repo>/.cache``."""
    return Path(os.environ.get("SIMO_CACHE", ROOT / ".cache"))


# profiles whose figures are the study's own (the README gallery): tiny, and regime, which only
# notebook 06 runs (`make regimes`)
TOP_LEVEL = ("tiny", "regime")


def figures_dir(profile: str, notebook: str, run: str | None = None) -> Path:
    """Where a notebook's figures go: committed for tiny and gpu, scratch space for smoke.

    ``run`` (a :func:`simo.params.run_id`) marks a run at non-default parameters: it writes
    ``build/runs/<run>/<notebook>/`` whatever the profile, so only default runs fill the gallery.

    tiny is the embedded default, so its figures sit at ``figures/<notebook>/`` (the README gallery),
    and so do regime's (notebook 06 only);
    any other profile writes under ``figures/<profile>/<notebook>/``, except smoke, which is a CI
    check and writes to ``build/`` so it never overwrites committed figures.
    """
    if run is not None:
        return RUNS / run / notebook
    if profile in TOP_LEVEL:
        return FIGURES / notebook
    if profile == "smoke":
        return BUILD / "figures-smoke" / notebook
    return FIGURES / profile / notebook
