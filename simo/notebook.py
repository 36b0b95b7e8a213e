"""What the first code cell of every notebook calls: validate parameters, seed, style, errors.

``cfg = simo.notebook.setup("01_pretrain_and_finetune", profile=profile, seed=seed, ...)`` returns
the validated :class:`simo.config.Profile`. A :class:`simo.errors.SimoError` raised later in the
notebook is shown as one line (``SimoError: ...``) instead of a traceback wall.
"""
from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch

from simo import config, plots
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
          **params: Any) -> config.Profile:
    """Validate the notebook's parameters into a profile and prepare torch, seeds and plots.

    Multi-seed notebooks pass ``seed=None, seeds=...``; the first seed seeds the notebook itself.
    """
    cfg = config.resolve(profile, seed=seed, **params)
    os.environ["SIMO_NOTEBOOK"] = notebook  # tags this notebook's cache events (and its jobs')
    torch.set_num_threads(cfg.num_threads)
    seed_everything(cfg.seeds[0])
    plots.activate(cfg.name, cfg.seeds[0])
    plots.set_style()
    try:
        from IPython import get_ipython

        ip = get_ipython()
        if ip is not None:
            ip.set_custom_exc((SimoError,), _one_line_error)
    except ImportError:
        pass
    return cfg
