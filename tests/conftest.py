"""Shared fixtures: a throw-away artifact cache and a tiny smoke profile (2 CPU cores, seconds)."""
from __future__ import annotations

import pytest
import torch

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
