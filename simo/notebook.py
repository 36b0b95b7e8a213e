"""What the first code cell of every notebook calls: validate parameters, seed, style, errors.

``cfg = simo.notebook.setup("01_pretrain_and_finetune", profile=profile, seed=seed, ...)`` returns
the validated :class:`simo.config.Profile`. It also checks every value of the notebook's
``parameters`` cell against its declared type (:mod:`simo.params`) and, if any differs from the
default, points figures and results at ``build/runs/<id>/`` so that only a default run writes the
committed gallery. A :class:`simo.errors.SimoError` raised later in the notebook is shown as one
line (``SimoError: ...``) instead of a traceback wall.
"""
from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch

from simo import config, params, paths, plots
from simo.errors import SimoError


def _one_line_error(shell: Any, etype: type, value: BaseException, tb: Any,
                    tb_offset: int | None = None) -> list[str]:
    """Publish the error as a one-line traceback (papermill still sees ename/evalue)."""
    line = f"{etype.__name__}: {value}"
    shell._showtraceback(etype, value, [line])
    return [line]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def setup(notebook: str, profile: str = "tiny", seed: int | None = 0,
          **kwargs: Any) -> config.Profile:
    """Validate the notebook's parameters into a profile and prepare torch, seeds and plots.

    Multi-seed notebooks pass ``seed=None, seeds=...``; the first seed seeds the notebook itself.
    """
    ip = _ipython()
    if ip is not None:
        ip.set_custom_exc((SimoError,), _one_line_error)
    values = notebook_values(notebook, ip.user_ns if ip is not None else {})
    cfg = config.resolve(profile, seed=seed, **kwargs)
    os.environ["SIMO_NOTEBOOK"] = notebook  # tags this notebook's cache events (and its jobs')
    torch.set_num_threads(cfg.num_threads)
    seed_everything(cfg.seeds[0])
    run, changed = params.run_of(notebook, cfg.name, values) if values else (None, {})
    plots.activate(cfg.name, cfg.seeds[0], run, values)
    plots.set_style()
    if run is not None:
        print(f"[simo] parameters differ from the defaults ({', '.join(changed)}): figures and "
              f"results go to {plots.figure_dir(notebook).relative_to(paths.ROOT)}/ "
              "(figures/ keeps the default run)")
    return cfg


def notebook_values(notebook: str, namespace: dict[str, Any]) -> dict[str, Any]:
    """The values of the notebook's declared parameters in ``namespace`` (its globals), checked
    against their declared types; {} outside a notebook (nothing to compare)."""
    decl = params.declared(notebook)
    found = {n: namespace[n] for n in decl if n in namespace}
    return params.validate(notebook, found) if found else {}


def _ipython() -> Any:
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    return get_ipython()
