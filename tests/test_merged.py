"""Merged models: MergeSetup evaluations, realignments and sweeps (simo.merged, simo.realign)."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from simo import cache, merged, realign, steps
from simo.config import with_settings
from simo.data import make_dataset
from simo.errors import MergeError, TaskError
from simo.tasks import delta_mtl

# ------------------------------------------------------------------ merging setup -----------------

@pytest.fixture(scope="module")
def setup(cache_dir, make_profile):
    p = make_profile(**{"tasks": ["segmentation", "depth"], "merging.fisher_batches": 1,
                        "realign.n_samples": 8, "realign.head_steps": 3, "realign.batch_size": 4})
    return merged.merge_setup(p, seed=0, with_fisher=True)


def test_merge_setup_gathers_every_task(setup):
    assert setup.names == ["segmentation", "depth"]
    assert len(setup.finetuned) == 2 and set(setup.heads) == {"segmentation", "depth"}
    assert setup.fishers is not None and set(setup.fishers[0]) == set(setup.pretrained)


def test_lambda_zero_is_the_pretrained_encoder(setup):
    for method in ("task_arithmetic", "ties", "lines"):
        enc = setup.encoders(method, 0.0)
        for k, v in setup.pretrained.items():
            assert torch.equal(enc["depth"][k], v), (method, k)


def test_tall_mask_gives_each_task_its_own_encoder(setup):
    enc = setup.encoders("tall_mask", 1.0)
    assert enc["segmentation"] is not enc["depth"]
    shared = setup.encoders("task_arithmetic", 0.5)
    assert shared["segmentation"] is shared["depth"]


def test_single_task_evaluation_matches_stored_metrics(setup):
    got = setup.original("single_task", 1.0, "test")
    stored = steps.finetuned(setup.profile, "depth", progress=False).meta["test"]["depth"]
    assert got["depth"] == pytest.approx(stored, rel=1e-5)


def test_head_realignment_changes_heads_not_encoder(setup):
    data = make_dataset(setup.profile, "train")
    enc = setup.encoders("task_arithmetic", 0.5)
    before = {k: v.clone() for k, v in enc["depth"].items()}
    heads, cost = realign.realign_heads(setup.profile, setup.tasks, enc, setup.heads, data,
                                         seed=0)
    assert cost["steps"] == setup.profile.realign.head_steps  # one shared encoder: one run
    assert 0 < cost["samples"] <= len(data["image"])
    assert any(not torch.equal(heads["depth"][k], setup.heads["depth"][k]) for k in heads["depth"])
    assert all(torch.equal(enc["depth"][k], before[k]) for k in before)
    # deterministic per seed
    again, _ = realign.realign_heads(setup.profile, setup.tasks, enc, setup.heads, data, seed=0)
    assert all(torch.equal(heads["depth"][k], again["depth"][k]) for k in heads["depth"])


def test_evaluations_are_cached_and_keyed_by_method_and_lambda(setup, cache_dir):
    a = setup.original("task_arithmetic", 0.5, "val")
    hits = cache.STATS["hits"]
    assert setup.original("task_arithmetic", 0.5, "val") == a
    assert cache.STATS["hits"] == hits + 1
    assert setup.original("task_arithmetic", 0.0, "val") != a
    r = setup.realigned("task_arithmetic", 0.5, "val")
    assert set(r) == set(setup.names) and r != a
    hits = cache.STATS["hits"]
    assert setup.realigned("task_arithmetic", 0.5, "test") == setup.realign("task_arithmetic", 0.5)["test"]
    assert cache.STATS["hits"] == hits + 2  # val and test come from one realignment


def test_realignment_cache_is_keyed_by_the_realignment_budget(setup):
    short = with_settings(setup.profile, {"realign.head_steps": 2, "realign.adapter_steps": 3})
    other = dataclasses.replace(setup, profile=short)
    assert other.realign("task_arithmetic", 0.5, "head")["steps"] == 2
    assert other.realign("task_arithmetic", 0.5, "repr")["steps"] == 3
    assert setup.realign("task_arithmetic", 0.5, "head")["steps"] == setup.profile.realign.head_steps


def test_representation_realignment_counts_its_steps_and_samples(setup):
    rec = setup.realign("task_arithmetic", 0.5, kind="repr")
    r = setup.profile.realign
    assert rec["steps"] == r.adapter_steps
    assert rec["samples"] == len(setup.data("small")["image"])  # batches drawn from the small set
    assert set(rec["test"]) == set(setup.names)
    assert rec["test"] != setup.realign("task_arithmetic", 0.5, kind="head")["test"]


def test_representation_realignment_keeps_its_best_validation_state(setup):
    rec = setup.realign("task_arithmetic", 0.5, kind="repr")
    steps, scores = zip(*rec["curve"])
    assert list(steps) == sorted(steps) and steps[-1] == setup.profile.realign.adapter_steps
    assert rec["best_step"] == steps[scores.index(max(scores))]  # the earliest best
    ref = setup.original("single_task", 1.0, "val")
    assert delta_mtl(rec["val"], ref, setup.tasks) == pytest.approx(max(scores))  # that state


def test_fisher_does_not_depend_on_the_thread_count(setup):
    art = steps.finetuned(setup.profile, "depth", seed=0)
    n = torch.get_num_threads()
    try:
        got = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            got.append(merged.fisher_of(setup.profile, art, "depth", 0, batches=2))
    finally:
        torch.set_num_threads(n)
    assert all(torch.equal(got[0][k], got[1][k]) for k in got[0])
    assert torch.get_num_threads() == n  # the pin is undone


def test_representation_realignment_needs_a_shared_encoder(setup):
    with pytest.raises(MergeError, match="one shared encoder"):
        setup.realign("tall_mask", 0.5, kind="repr")
    with pytest.raises(MergeError, match="realignment kind"):
        setup.realign("task_arithmetic", 0.5, kind="lora")


def test_realignment_set_is_a_seeded_train_subset(setup):
    small = setup.data("small")
    assert len(small["image"]) == setup.profile.realign.n_samples
    assert torch.equal(small["image"], setup.data("small")["image"])


def test_sweep_at_lambda_one_of_its_own_vector_is_the_single_task_model(setup):
    own = setup.sweep("depth", 1.0)["depth"]
    assert own == pytest.approx(setup.original("single_task", 1.0, "val")["depth"], rel=1e-5)
    assert setup.sweep("depth", 0.0) == setup.sweep("segmentation", 0.0)  # both: θ0
    assert setup.sweep("depth", 0.5) != setup.sweep("segmentation", 0.5)


def test_sweep_with_heads_on_the_pretrained_encoder(setup):
    heads = setup.pretrained_heads()
    assert set(heads) == set(setup.names)
    assert any(not torch.equal(heads["depth"][k], setup.heads["depth"][k]) for k in heads["depth"])
    assert setup.sweep("depth", 0.0, "pretrained") != setup.sweep("depth", 0.0, "original")
    hits = cache.STATS["hits"]
    setup.pretrained_heads()
    assert cache.STATS["hits"] == hits + 1


def test_sweep_rejects_unknown_source_and_heads(setup):
    with pytest.raises(TaskError, match="unknown source task 'edges'; choose one of: segmentation"):
        setup.sweep("edges", 0.5)
    with pytest.raises(MergeError, match="unknown heads 'merged'; choose one of: original, pretrained"):
        setup.sweep("depth", 0.5, "merged")
