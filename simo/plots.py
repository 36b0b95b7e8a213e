"""One plotting style and the one helper that saves figures and results with provenance.

``save_figure(fig, notebook, name)`` writes ``figures/<notebook>/<name>.png`` (and ``.pdf``) for
the active profile; ``save_results(notebook, results)`` writes ``results.json`` next to them.
Both embed no timestamps, so regenerating with the same code, profile and seed changes nothing.
"""
from __future__ import annotations

import functools
import json
import platform
import subprocess
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib


import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402

from simo import paths  # noqa: E402

_ACTIVE: dict[str, Any] = {"profile": "tiny", "seed": 0, "run": None, "parameters": {}}
WRITTEN: list[Path] = []  # figures written by this process (the runner's summary reads them)


def set_style() -> None:
    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind")
    plt.rcParams.update({"figure.dpi": 90, "savefig.dpi": 110, "savefig.bbox": "tight",
                         "axes.titlesize": "medium"})


def activate(profile: str, seed: int, run: str | None = None,
             parameters: Mapping[str, Any] | None = None) -> None:
    """Tell the helpers which figure directory to use and what to record (set by notebook setup):
    ``run`` is the id of a non-default run (it writes under ``build/runs/``), ``parameters`` every
    parameter of the notebook, for the provenance."""
    _ACTIVE.update(profile=profile, seed=seed, run=run, parameters=dict(parameters or {}))


def figure_dir(notebook: str) -> Path:
    d = paths.figures_dir(_ACTIVE["profile"], notebook, _ACTIVE["run"])
    d.mkdir(parents=True, exist_ok=True)
    return d


def save_figure(fig: Any, notebook: str, name: str, pdf: bool = False) -> None:
    """Save ``fig`` as PNG (and PDF if asked) under the notebook's figure directory.

    Returns nothing, so a cell that ends with this call echoes no path; ``WRITTEN`` lists them."""
    d = figure_dir(notebook)
    png = d / f"{name}.png"
    # provenance travels with the figure: a PNG text chunk, read back by any image tool
    fig.savefig(png, metadata={"Software": None, "Description": json.dumps(provenance())})
    if pdf:
        fig.savefig(d / f"{name}.pdf", metadata={"CreationDate": None, "Producer": None})
    WRITTEN.append(png)


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=paths.ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


@functools.lru_cache(maxsize=1)
def _commit() -> str:
    return _git("rev-parse", "--short=12", "HEAD") or "unknown"


@functools.lru_cache(maxsize=1)
def _dirty() -> bool | None:
    """Whether the code differs from the commit (outputs that a run writes do not count)."""
    out = _git("status", "--porcelain", "--", ".", ":(exclude)figures", ":(exclude)executed")
    return None if out is None else bool(out)


def provenance() -> dict[str, Any]:
    """Where a result came from: code commit (and whether the tree had uncommitted changes), every
    parameter of the run, package versions, device. No timestamps."""
    import numpy
    import timm
    import torch

    import simo

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {"git_commit": _commit(), "dirty": _dirty(), "profile": _ACTIVE["profile"],
            "seed": _ACTIVE["seed"], "run": _ACTIVE["run"], "parameters": _ACTIVE["parameters"],
            "device": device, "machine": platform.machine(),
            "versions": {"simo": simo.__version__, "torch": torch.__version__,
                         "timm": timm.__version__, "numpy": numpy.__version__,
                         "ivon": _version("ivon-opt"), "python": platform.python_version()}}


def _version(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def save_results(notebook: str, results: dict[str, Any]) -> Path:
    """Write ``results.json`` (sorted keys, rounded floats) with provenance under ``meta``."""
    path = figure_dir(notebook) / "results.json"
    payload = {**_round(results), "meta": provenance()}
    path.write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n")
    return path


def _round(obj: Any, digits: int = 6) -> Any:
    if isinstance(obj, float):
        return round(obj, digits)
    if isinstance(obj, dict):
        return {str(k): _round(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_round(v, digits) for v in obj]
    return obj


def show_field(ax: Any, field: str, value: Any, num_classes: int = 6) -> None:
    """Draw one sample's field (HxW or HxWxC numpy array) in a readable colour map."""
    import numpy as np

    v = np.asarray(value)
    if field == "image":
        ax.imshow(np.clip(v, 0, 1))
    elif field == "label":
        cmap = matplotlib.colors.ListedColormap(sns.color_palette("tab10", num_classes))
        ax.imshow(np.ma.masked_less(v, 0), cmap=cmap, vmin=-0.5, vmax=num_classes - 0.5,
                  interpolation="nearest")
    elif field == "normal":
        ax.imshow(np.clip((v + 1) / 2, 0, 1) * (np.linalg.norm(v, axis=-1, keepdims=True) > 0))
    elif field == "depth":
        ax.imshow(np.ma.masked_equal(v, 0), cmap="magma_r")
    else:
        ax.imshow(v, cmap="gray", vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])


def to_hwc(field: str, t: Any) -> Any:
    """One sample's tensor in training layout -> numpy array for ``show_field``."""
    if t.ndim == 3 and t.shape[0] in (1, 3):
        t = t.permute(1, 2, 0)
        if t.shape[-1] == 1:
            t = t[..., 0]
    return t.detach().cpu().numpy()


def sample_grid(rows: Sequence[dict], fields: Sequence[str], num_classes: int = 6,
                kinds: Sequence[str] | None = None) -> Any:
    """A figure with one row per sample dict and one column per field (labels or predictions).

    ``kinds`` says how to draw each column (a field name of ``scenes.FIELDS``); default: the field.
    """
    import numpy as np

    fig, axes = plt.subplots(len(rows), len(fields), figsize=(1.6 * len(fields), 1.6 * len(rows)),
                             squeeze=False)
    for r, sample in enumerate(rows):
        for c, f in enumerate(fields):
            kind = (kinds or fields)[c]
            show_field(axes[r, c], kind, to_hwc(kind, sample[f]), num_classes)
            if r == 0:
                axes[r, c].set_title(f)
    fig.tight_layout()
    return fig


def heatmap(ax: Any, matrix: Mapping[str, Mapping[str, float]], names: Sequence[str], title: str,
            fmt: str = ".2f", xlabel: str | None = None, ylabel: str | None = None) -> None:
    """A task × task matrix (rows: first key) with its values written in the cells; diverging
    colours centred at 0, so the sign is what the eye reads first. NaN cells stay blank."""
    import numpy as np

    values = np.array([[matrix[a].get(b, np.nan) for b in names] for a in names], dtype=float)
    lim = np.nanmax(np.abs(values)) if np.isfinite(values).any() else 1.0
    ax.imshow(values, cmap="RdBu_r", vmin=-lim, vmax=lim)
    for i in range(len(names)):
        for j in range(len(names)):
            if np.isfinite(values[i, j]):
                dark = abs(values[i, j]) > 0.6 * lim
                ax.text(j, i, format(values[i, j], fmt), ha="center", va="center", fontsize=8,
                        color="white" if dark else "black")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(False)
