"""Shared fixtures: a throw-away artifact cache, a tiny smoke profile (2 CPU cores, seconds), and
the notebooks executed on the smoke profile once per session."""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from simo import paths, runner
from simo.config import Profile, load_profile

torch.set_num_threads(1)  # the test machines are small and shared

TINY = {
    "data.n_pretrain": 16, "data.n_train": 16, "data.n_val": 8, "data.n_test": 8,
    "data.image_size": 32,
    "model.patch_size": 8, "model.embed_dim": 32, "model.depth": 2, "model.num_heads": 2,
    "model.feature_blocks": [0, 1], "model.head": "linear",
    "pretrain.steps": 3, "pretrain.batch_size": 8,
    "finetune.head_steps": 2, "finetune.steps": 4, "finetune.batch_size": 8,
    "finetune.eval_every": 2, "finetune.ckpt_every": 2, "finetune.n_eval": 8,
    "eval_batch_size": 8,
}


def tiny_profile(**overrides) -> Profile:
    """The smoke profile shrunk to TINY, plus dotted overrides (``**{"finetune.steps": 0}``)."""
    return load_profile("smoke", {**TINY, **overrides})


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    """Point the artifact cache (``SIMO_CACHE``) at a fresh temporary directory."""
    monkeypatch.setenv("SIMO_CACHE", str(tmp_path))
    return tmp_path


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """One temporary cache per test module: scenes render and the encoder pretrains once."""
    d = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SIMO_CACHE", str(d))
        yield d


@pytest.fixture(scope="session")
def smoke() -> Profile:
    return tiny_profile()


@pytest.fixture(scope="session")
def make_profile():
    """``make_profile(**{"finetune.steps": 0})``: the tiny smoke profile with more overrides."""
    return tiny_profile


# The session's notebook runs give the profile two one-thread job workers, as `--jobs 2` does: the
# notebooks' prefetch lists then run side by side on the 2 cores (and that path is exercised). It
# is still a default run (``jobs.*`` is execution-only): the figures go where a plain run puts them.
SMOKE_PARAMS = {"overrides": {"jobs.workers": 2}}


@dataclass(frozen=True)
class Executed:
    """A notebook executed in this session: its run record, the executed ``.ipynb``, and a copy of
    what it wrote (figures and ``results.json``), taken right after the run."""

    record: runner.RunRecord
    notebook: Path
    figures: Path

    @property
    def results_text(self) -> str:
        return (self.figures / "results.json").read_text()

    @property
    def results(self) -> dict:
        return json.loads(self.results_text)


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """``smoke_run("03_realignment")``: that notebook executed on the smoke profile, once per
    session, so the notebook check and its contract test share one execution.

    All notebooks share one fresh cache, so later ones reuse earlier ones' artifacts, as in a batch
    run. The notebook's figure directory is emptied first and copied right after the run: what a
    test reads is what this execution wrote, never a file left by an earlier run.
    """
    cache_root = tmp_path_factory.mktemp("nbcache")
    done: dict[str, Executed] = {}

    def run(notebook: str) -> Executed:
        if notebook not in done:
            figures = paths.figures_dir("smoke", notebook)
            shutil.rmtree(figures, ignore_errors=True)
            out = tmp_path_factory.mktemp(notebook)
            with pytest.MonkeyPatch.context() as mp:
                mp.setenv("SIMO_CACHE", str(cache_root))  # inherited by the papermill kernel
                rec = runner.run_notebook(notebook, "smoke", SMOKE_PARAMS, out_dir=out,
                                          progress=False)
            if figures.is_dir():
                shutil.copytree(figures, out / "figures")
            done[notebook] = Executed(rec, out / f"{notebook}.ipynb", out / "figures")
        return done[notebook]

    return run
