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
    _commit(), _dirty()  # read now: the code that runs is the code at setup, not at the first save


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


# ----------------------------------------------------------------------------------------------
# one readable label per plotted quantity: name, unit and direction (never a raw key on an axis)
# ----------------------------------------------------------------------------------------------
HIGHER, LOWER = "higher is better", "lower is better"
# metric key -> (readable name, unit, direction); a task metric's direction is checked against
# simo.tasks by the tests, and metric_label(task=...) takes it from the task itself
METRIC_LABELS: dict[str, tuple[str, str, str | None]] = {
    "miou": ("mIoU", "", HIGHER),
    "pixel_acc": ("pixel accuracy", "", HIGHER),
    "abs_err": ("abs. error", "", LOWER),
    "rel_err": ("rel. error", "", LOWER),
    "mean_angle": ("mean angle", "°", LOWER),
    "median_angle": ("median angle", "°", LOWER),
    "within_11_25": ("pixels within 11.25°", "%", HIGHER),
    "within_22_5": ("pixels within 22.5°", "%", HIGHER),
    "within_30": ("pixels within 30°", "%", HIGHER),
    "f1": ("F1", "", HIGHER),
    "l1": ("L1 error", "", LOWER),
    "psnr": ("PSNR", "dB", HIGHER),
    # summaries the notebooks plot
    "points": ("normalized points", "", "100 = single-task; higher is better"),
    "normalized_perf": ("normalized perf.", "", "1 = single-task; higher is better"),
    "progress": ("main metric / its final value", "", "1 = final; higher is better"),
    "gap": ("gap to joint MTL", "Δ_MTL points", "lower: realignment closer"),
    "transfer": ("transfer M", "", "1 = as good as single-task; higher is better"),
    "affinity": ("pair affinity A", "%", "> 0: training together helps"),
    "cka": ("linear CKA to single-task", "", "1 = same up to rotation/scale"),
    "cosine": ("cosine to single-task", "", "1 = identical features"),
    "tv_cosine": ("task-vector cosine", "", "1 = same direction"),
    # measures of notebook 06 (simo.regimes.measures)
    "tv_norm": ("task-vector size ‖τ‖/‖θ0‖", "", None),
    "cka_last": ("last-block CKA, merged vs single-task", "", "1 = same up to rotation/scale"),
    "cosine_last": ("last-block cosine, merged vs single-task", "", "1 = identical"),
    "probe": ("probe: Δ_MTL of θ0 with realigned heads", "%", HIGHER),
    # how well a preview (05) matches real weighted finetuning
    "mae": ("preview MAE over α and tasks", "points", LOWER),
    "mean_points": ("mean points over tasks", "", "100 = single-task; higher is better"),
}
_DELTA_NAMES = {"normalized": "Δ_MTL (normalized perf.)", "relative": "Δm (relative change)"}
_SPLITS = {"val": "val", "test": "test", "train": "train"}


def metric_label(metric: str, split: str | None = None, task: str | None = None,
                 convention: str = "normalized", wrap: bool = False,
                 detail: str | None = None) -> str:
    """The axis label of a plotted quantity: readable name, split, unit and direction.

    ``metric_label("mean_angle", "val", "normals")`` -> ``"normals mean angle on val, ° (lower is
    better)"``; ``metric_label("delta_mtl", "test")`` -> ``"Δ_MTL (normalized perf.) on test, %
    (higher is better)"`` (``convention`` names Δ_MTL's convention, as ``simo.tasks.delta_label``).
    A task metric's direction comes from the task itself when ``task`` is given; ``detail``
    qualifies the name (``transfer M (original heads)``); ``wrap`` puts the direction on a second
    line (for a narrow axis).
    """
    if metric in ("delta_mtl", "delta"):
        from simo.tasks import delta_label

        delta_label(convention)  # a one-line error for an unknown convention
        name, unit, direction = _DELTA_NAMES[convention], "%", HIGHER
    elif metric in METRIC_LABELS:
        name, unit, direction = METRIC_LABELS[metric]
    else:
        raise KeyError(f"no readable label for {metric!r}; add it to plots.METRIC_LABELS "
                       f"(known: {', '.join(sorted(METRIC_LABELS))})")
    if task is not None:
        name = f"{task} {name}"
        try:
            from simo.tasks import get_task

            hib = {m.name: m.higher_is_better for m in get_task(task).metrics}.get(metric)
        except Exception:  # a task this build does not know: keep the table's direction
            hib = None
        if hib is not None:
            direction = HIGHER if hib else LOWER
    if detail:
        name = f"{name} ({detail})"
    where = f" on {_SPLITS.get(split, split)}" if split else ""
    unit = f", {unit}" if unit else ""
    return f"{name}{where}{unit}" + (f"{chr(10) if wrap else ' '}({direction})" if direction else "")


# ----------------------------------------------------------------------------------------------
# one style per task and per method: colour (colorblind palette) + marker + linestyle, so the same
# thing looks the same in every figure and two close colours differ by marker and linestyle too
# ----------------------------------------------------------------------------------------------
PALETTE: list[str] = sns.color_palette("colorblind").as_hex()
_B, _O, _G, _V, _P, _BR, _PK, _GR, _Y, _LB = PALETTE  # blue orange green vermilion purple brown
#                                                     pink grey yellow light-blue


def _s(color: str, marker: str, linestyle: str, label: str) -> dict[str, str]:
    return {"color": color, "marker": marker, "linestyle": linestyle, "label": label}


TASK_STYLE: dict[str, dict[str, str]] = {
    "segmentation": _s(_B, "o", "-", "segmentation"),
    "depth": _s(_O, "s", "-", "depth"),
    "normals": _s(_G, "^", "-", "normals"),
    "edges": _s(_P, "D", "--", "edges"),
    "keypoints": _s(_V, "v", "-.", "keypoints"),
    "autoencoder": _s(_BR, "P", ":", "autoencoder"),
    "disparity": _s(_LB, "X", "--", "disparity"),
    "parts": _s(_PK, "h", "-.", "parts"),
}
METHOD_STYLE: dict[str, dict[str, str]] = {
    # merges (02, 03, 06) and what realignment makes of them; joint MTL is the black reference
    "joint_mtl": _s("black", "*", "-", "joint MTL"),
    "single_task": _s(_GR, "o", "--", "single-task"),
    "task_arithmetic": _s(_B, "o", "-", "task arithmetic"),
    "task_arithmetic+head": _s(_G, "o", "--", "task arithmetic + head realign."),
    "task_arithmetic+repr": _s(_V, "o", "-.", "task arithmetic + repr. realign."),
    "ties": _s(_O, "s", "-", "TIES"),
    "ties+head": _s(_P, "s", "--", "TIES + head realign."),
    "ties+repr": _s(_LB, "s", "-.", "TIES + repr. realign."),
    "weight_average": _s(_GR, "X", "-", "weight averaging"),
    "dare": _s(_LB, "D", "--", "DARE"),
    "tall_mask": _s(_BR, "^", "--", "TALL masks"),
    "consensus": _s(_PK, "P", "--", "consensus"),
    "lines": _s(_P, "v", "-", "LiNeS"),
    "fisher": _s(_G, "h", ":", "Fisher"),
    # starting points of finetuning (01)
    "foundation": _s(_B, "o", "-", "foundation θ0"),
    "weak": _s(_G, "^", "--", "weak θ0 (SimMIM)"),
    "scratch": _s(_O, "s", ":", "scratch"),
    # previews (05) and the real weighted finetuning they preview
    "adamw": _s("black", "o", "-", "weighted finetuning (AdamW)"),
    "ivon": _s(_GR, "o", "--", "weighted finetuning (IVON)"),
    "sgd": _s(_V, "v", ":", "weighted finetuning (SGD)"),
    "isotropic": _s(_B, "^", ":", "isotropic (weighted avg.)"),
    "adamw_sg": _s(_O, "s", "--", "AdamW-SG"),
    "ivon_hess": _s(_G, "o", "-", "IVON-Hess"),
    "multi_ivon_hess": _s(_P, "D", "-.", "MultiIVON-Hess"),
}
# variants of one method drawn as bars: the fill tells them apart, the colour stays the method's
VARIANT_FILL: dict[str, dict[str, Any]] = {
    "original": {"fill": False, "hatch": None, "label": "original heads"},
    "original_lambda": {"fill": True, "hatch": "///", "label": "λ chosen with the original heads"},
    "realigned_lambda": {"fill": True, "hatch": None, "label": "λ re-selected after realignment"},
    "realigned": {"fill": True, "hatch": None, "label": "heads realigned"},
}


def _key(name: str) -> str:
    return name.strip().lower().replace(" ", "_").replace("-", "_")


def style(name: str, kind: str = "line", label: str | None = None) -> dict[str, Any]:
    """Matplotlib keywords of a task or method (``TASK_STYLE``, ``METHOD_STYLE``), for ``kind``:
    ``line`` (plot: color, marker, linestyle, label), ``points`` (scatter-like plot / errorbar: no
    line), ``bar`` (color, label) or ``scatter`` (c, marker, label). ``label`` overrides the name.

    ``ax.plot(x, y, **plots.style("depth"))``; ``ax.bar(x, h, **plots.style("ties", "bar"))``."""
    k = _key(name)
    s = TASK_STYLE.get(k) or METHOD_STYLE.get(k)
    if s is None:
        raise KeyError(f"no style for {name!r}; add it to plots.TASK_STYLE or plots.METHOD_STYLE")
    out = dict(s, label=label if label is not None else s["label"])
    if kind == "line":
        return out
    if kind == "points":
        return dict(out, linestyle="none")
    if kind == "bar":
        return {"color": out["color"], "label": out["label"]}
    if kind == "scatter":
        return {"c": out["color"], "marker": out["marker"], "label": out["label"]}
    raise ValueError(f"kind must be line, points, bar or scatter, not {kind!r}")


def display_name(name: str) -> str:
    """The readable name of a task or method key (``task_arithmetic+repr`` -> ``task arithmetic +
    repr. realign.``); unknown names come back unchanged."""
    k = _key(name)
    s = TASK_STYLE.get(k) or METHOD_STYLE.get(k)
    return s["label"] if s else name


_SERIES = [(c, m) for c, m in zip(PALETTE[:8] + [_LB], "osD^vPXh*")]


def series_style(i: int, label: str | None = None, line: bool = True) -> dict[str, Any]:
    """The ``i``-th style of a generic series (knob values, task pairs, seeds): colour and marker
    both change from one to the next, so neighbours never differ by a close colour alone."""
    color, marker = _SERIES[i % len(_SERIES)]
    out: dict[str, Any] = {"color": color, "marker": marker, "label": label}
    out["linestyle"] = ("-", "--", "-.", ":")[(i // 2) % 4] if line else "none"
    return out


def bar_variant(variant: str, color: str, **kw: Any) -> dict[str, Any]:
    """``ax.bar`` keywords of one variant (``VARIANT_FILL``) in a method's ``color``: outline only
    (original heads), hatched, or solid."""
    v = VARIANT_FILL[variant]
    if not v["fill"]:
        return {"facecolor": "white", "edgecolor": color, "linewidth": 1.4, **kw}
    return {"facecolor": color, "edgecolor": "white" if v["hatch"] else color,
            "hatch": v["hatch"], "linewidth": 0.5, **kw}


def variant_legend(ax: Any, variants: Sequence[str] | Mapping[str, str], **kw: Any) -> Any:
    """A legend of bar variants (grey swatches of ``bar_variant``; a mapping gives each its own
    label) followed by the axis' own labelled handles."""
    from matplotlib.patches import Patch

    labels = variants if isinstance(variants, Mapping) else {v: VARIANT_FILL[v]["label"]
                                                             for v in variants}
    handles, _ = ax.get_legend_handles_labels()
    swatches = [Patch(**bar_variant(v, "#555555"), label=text) for v, text in labels.items()]
    return ax.legend(handles=swatches + handles, **kw)


# ----------------------------------------------------------------------------------------------
# axes: reference lines with their label, integer block numbers, readable log ticks, seed spread
# ----------------------------------------------------------------------------------------------
def reference_line(ax: Any, y: float, text: str, color: str = "0.3", ls: str = "--",
                   headroom: float = 0.12, **kw: Any) -> None:
    """A horizontal reference (a ceiling, a target, the paper's margin) with its label written on
    it, and room above it: the y-limits grow so the line never sits on the frame."""
    ax.axhline(y, color=color, ls=ls, lw=1, **kw)
    lo, hi = ax.get_ylim()
    pad = headroom * ((max(hi, y) - min(lo, y)) or 1.0)
    ax.set_ylim(min(lo, y - pad), max(hi, y + pad))
    ax.annotate(text, (1.0, y), xycoords=("axes fraction", "data"), xytext=(-3, 2),
                textcoords="offset points", ha="right", va="bottom", fontsize=7, color=color,
                bbox={"fc": "white", "ec": "none", "alpha": 0.75, "pad": 0.4})


def block_axis(ax: Any, n_blocks: int, label: str = "block", axis: str = "x") -> None:
    """Integer block numbers 1..L on ``axis`` (the data must be plotted at 1..L)."""
    ticks = list(range(1, n_blocks + 1))
    if axis == "x":
        ax.set_xticks(ticks)
        ax.set_xlabel(label)
    else:
        ax.set_yticks(ticks)
        ax.set_ylabel(label)


def block_name(key: str) -> str:
    """``block 0`` … ``block L-1`` (0-based group names of the code) -> ``block 1`` … ``block L``."""
    parts = key.split()
    return f"block {int(parts[1]) + 1}" if len(parts) == 2 and parts[0] == "block" else key


def log_axis(ax: Any, axis: str = "x") -> None:
    """Log scale with plain-number major ticks and no minor labels, so tick labels never pile up
    (matplotlib labels minor ticks like 2×10^2, 3×10^2 over narrow ranges): the sparsest of
    1, {1, 3}, {1, 2, 5}, {1, 2, 3, 5, 7} or 1..9 × 10^k that puts three labels in view. Call it after
    plotting (it reads the limits)."""
    import numpy as np
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
    which = ax.xaxis if axis == "x" else ax.yaxis
    lo, hi = sorted(ax.get_xlim() if axis == "x" else ax.get_ylim())
    for subs in ((1.0,), (1.0, 3.0), (1.0, 2.0, 5.0), (1.0, 2.0, 3.0, 5.0, 7.0),
                 tuple(np.arange(1.0, 10.0))):
        ticks = LogLocator(base=10, subs=subs).tick_values(lo, hi)
        if ((ticks >= lo * (1 - 1e-9)) & (ticks <= hi * (1 + 1e-9))).sum() >= 3:
            break
    which.set_major_locator(LogLocator(base=10, subs=subs))
    which.set_major_formatter(FuncFormatter(_short_number))
    which.set_minor_formatter(NullFormatter())


def _short_number(v: float, _pos: Any = None) -> str:
    """Tick text that stays short: 0.5, 20, 300, 1k, 3k, 20k, 1M."""
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if v >= scale:
            return f"{v / scale:g}{suffix}"
    return f"{v:g}"


def seed_points(ax: Any, xs: Sequence[float], values: Sequence[Sequence[float]], color: str,
                marker: str = "o", width: float = 0.1, **kw: Any) -> None:
    """The spread behind a mean: at each ``xs[i]``, one small point per seed of ``values[i]``,
    spread over ``width`` so that equal values stay visible (``kw`` go to ``ax.scatter``, once)."""
    import numpy as np

    px, py = [], []
    for x, vals in zip(xs, values):
        vals = [float(v) for v in vals]
        px += list(x + (np.linspace(-width / 2, width / 2, len(vals)) if len(vals) > 1 else np.zeros(1)))
        py += vals
    ax.scatter(px, py, s=12, c=color, marker=marker, edgecolors="white", linewidths=0.4,
               zorder=4, **kw)


def label_points(ax: Any, xs: Sequence[float], ys: Sequence[float], texts: Sequence[str],
                 fontsize: float = 6.5, **kw: Any) -> list[Any]:
    """Write ``texts`` next to points without piling them up. Points that coincide on screen
    share one label (their texts joined by `` / ``); each label takes the first of a ring of
    offsets around its point, nearest first, whose box stays inside the axes and overlaps no
    other label, no labelled point and no text already there (a reference line's label); if
    none is free, the one with the fewest overlaps. A thin leader line joins a label set further
    off. Returns the text artists."""
    import numpy as np
    from matplotlib.text import Text
    from matplotlib.transforms import Bbox

    fig = ax.figure
    fig.canvas.draw()  # the renderer measures the boxes, and the limits are final
    renderer = fig.canvas.get_renderer()
    groups: dict[tuple[int, int], tuple[float, float, list[str]]] = {}
    for x, y, text in zip(xs, ys, texts):
        px, py = ax.transData.transform((x, y))
        key = (round(px / 4), round(py / 4))  # within ~4 px: the same place on screen
        groups.setdefault(key, (x, y, []))[2].append(text)
    offsets = [(4, 4), (4, -10), (-4, 4), (-4, -10)] + [  # then rings further and further off
        (round(r * np.cos(a)), round(r * np.sin(a)) - 3)
        for r in (16, 28, 42, 60, 80, 105, 135) for a in np.linspace(0, 2 * np.pi, 16, endpoint=False)]
    frame = ax.get_window_extent(renderer)
    placed = [t.get_window_extent(renderer) for t in ax.texts]
    # every drawn data point (markers of lines, scatters) is an obstacle too, labelled or not
    xy = [np.column_stack(ln.get_data()) for ln in ax.lines if ln.get_marker() not in ("", "None")]
    xy += [c.get_offsets() for c in ax.collections if hasattr(c, "get_offsets")
           and c.get_transform() == ax.transData]
    xy = [np.asarray(a, dtype=float) for a in xy if len(a)] + [np.array([[x, y] for x, y, _ in
                                                                     groups.values()])]
    points = [Bbox.from_bounds(*(p - 3), 6, 6) for p in ax.transData.transform(np.vstack(xy))
              if np.isfinite(p).all()]
    out = []
    for x, y, parts in sorted(groups.values(), key=lambda g: (g[1], g[0])):
        text, best = " / ".join(dict.fromkeys(parts)), None
        for k, (dx, dy) in enumerate(offsets):
            t = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points",
                            ha="left" if dx >= 0 else "right", fontsize=fontsize,
                            arrowprops={"arrowstyle": "-", "lw": 0.6, "color": "0.35"}
                            if k >= 4 else None, **kw)
            t.update_positions(renderer)
            box = Text.get_window_extent(t, renderer).expanded(1.04, 1.15)  # without the leader
            outside = not (box.x0 >= frame.x0 and box.x1 <= frame.x1 and box.y0 >= frame.y0
                           and box.y1 <= frame.y1)
            cost = 10 * outside + sum(box.overlaps(b) for b in placed + points)
            if best is None or cost < best[0]:
                if best is not None:
                    best[1].remove()
                best = (cost, t, box)
            else:
                t.remove()
            if cost == 0:
                break
        placed.append(best[2])
        out.append(best[1])
    return out


def mean_band(ax: Any, x: Sequence[float], ys: Any, style: Mapping[str, Any], curve: bool = True,
              shift: float = 0.0, **kw: Any) -> None:
    """Seeds (rows of ``ys``) against ``x``: the mean as a line with a min-max band (``curve``),
    or as points with min-max bars moved by ``shift`` along x (many points share an x)."""
    import numpy as np

    ys = np.atleast_2d(np.asarray(ys, dtype=float))
    mean = ys.mean(0)
    if curve:
        ax.plot(x, mean, lw=1.3, ms=4, **style, **kw)
        if len(ys) > 1:
            ax.fill_between(x, ys.min(0), ys.max(0), color=style["color"], alpha=0.15, lw=0)
    else:
        ax.errorbar(np.asarray(x) + shift, mean, yerr=[mean - ys.min(0), ys.max(0) - mean], ms=4,
                    lw=0.8, **{**style, "linestyle": "none"}, **kw)


def progress_curve(history: Sequence[Mapping], tasks: Sequence[Any]) -> tuple[Any, Any]:
    """Fraction of training (x) and the mean over ``tasks`` of the validation main metric as a
    fraction of its final value (y; a lower-is-better metric inverted, so 1 = final, higher is
    better): how far a run is from its plateau."""
    import numpy as np

    from simo import analysis

    rows = []
    for t in tasks:
        steps, vals = analysis.curve(history, t.name, t.main_metric)
        final = vals[-1]
        hib = analysis.better(t, 1.0, 0.0)  # higher is better
        rows.append([v / final if hib else final / v for v in vals])
    return np.array(steps) / steps[-1], np.mean(rows, axis=0)


def heatmap(ax: Any, matrix: Mapping[str, Mapping[str, float]], names: Sequence[str], title: str,
            fmt: str = ".2f", xlabel: str | None = None, ylabel: str | None = None,
            diagonal: str = "show", cbar_label: str | None = None, colorbar: bool = True) -> Any:
    """A task × task matrix (rows: first key) with its values written in the cells; diverging
    colours centred at 0, so the sign is what the eye reads first, and a colorbar (``cbar_label``).
    NaN cells stay blank.

    ``diagonal``: ``show`` colours the diagonal like any cell; ``grey`` writes its values on grey
    cells and ``mask`` leaves them blank, and both scale the colours to the off-diagonal values
    only (a diagonal of ones would wash them out). Returns the colorbar (or None)."""
    import numpy as np

    values = np.array([[matrix[a].get(b, np.nan) for b in names] for a in names], dtype=float)
    if diagonal not in ("show", "grey", "mask"):
        raise ValueError(f"diagonal must be show, grey or mask, not {diagonal!r}")
    off = ~np.eye(len(names), dtype=bool)
    scaled = values if diagonal == "show" else np.where(off, values, np.nan)
    lim = float(np.nanmax(np.abs(scaled))) if np.isfinite(scaled).any() else 1.0
    lim = lim or 1.0
    im = ax.imshow(np.ma.masked_invalid(scaled), cmap="RdBu_r", vmin=-lim, vmax=lim)
    if diagonal == "grey":
        ax.imshow(np.ma.masked_where(off, np.ones_like(values)), cmap="Greys", vmin=0, vmax=4)
    for i in range(len(names)):
        for j in range(len(names)):
            if np.isfinite(values[i, j]) and not (i == j and diagonal == "mask"):
                diag = i == j and diagonal == "grey"
                dark = not diag and abs(values[i, j]) > 0.6 * lim
                ax.text(j, i, format(values[i, j], fmt), ha="center", va="center", fontsize=8,
                        color="0.35" if diag else "white" if dark else "black")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(False)
    if not colorbar:
        return None
    cb = ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    label = cbar_label or ""
    if diagonal != "show":
        label += ("\n" if label else "") + "(colours: off-diagonal cells)"
    cb.set_label(label, fontsize=8)
    cb.ax.tick_params(labelsize=7)
    return cb


def live_preview(names: Sequence[str], alphas: Sequence[Sequence[float]],
                 truth: Mapping[str, Sequence[float]], grid: Mapping[str, Sequence[float]],
                 alpha: Sequence[float], live: Mapping[str, Mapping[str, Any]], method: str) -> Any:
    """The live preview of notebook 05: per task, its points against its own weight α_t for real
    weighted finetuning (``truth``) and the static preview grid (``grid``, realigned heads), with
    the live reading at ``alpha`` (``live[heads][task]``: original and realigned heads) on top."""
    import numpy as np

    fig, axes = plt.subplots(1, len(names), figsize=(3.4 * len(names), 2.9), squeeze=False)
    color = style(method)["color"]
    for k, (ax, t) in enumerate(zip(axes[0], names)):
        x = np.array([a[k] for a in alphas])
        order = np.argsort(x, kind="stable")
        ax.plot(x[order], np.asarray(truth[t])[order], lw=1.5, ms=3,
                **style("adamw", label="ground truth"))
        ax.plot(x[order], np.asarray(grid[t])[order], lw=1, ms=3,
                **style(method, label="preview grid (realigned)"))
        for h, marker in (("original", "*"), ("realigned", "P")):
            ax.scatter([alpha[k]], live[h][t], marker=marker, s=120, zorder=4, c=color,
                       edgecolors="k" if h == "original" else "white", label=f"live, {h} heads")
        ax.set(title=t, xlabel=f"weight α_{t}")
    axes[0, 0].set_ylabel(metric_label("points", wrap=True), fontsize=8)
    axes[0, 0].legend(fontsize=6)
    return fig
