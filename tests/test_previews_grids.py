"""The previews' cached steps: posteriors, weighted runs, preview grids (simo.previews.grids)."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from simo import previews, steps
from simo.config import load_profile
from simo.errors import ConfigError, PreviewError, TaskError

# ------------------------------------------------------------------------------- previews (05)
@pytest.fixture(scope="module")
def pv_profile(make_profile):
    return make_profile(**{"previews.tasks": ["segmentation", "depth"], "previews.n_alpha": 3,
                           "previews.seeds": [0, 1], "previews.components": 2,
                           "previews.realign_samples": 8, "previews.realign_steps": 2,
                           "previews.em_iters": 3})


def test_posteriors_of_each_kind(cache_dir, pv_profile):
    pp = previews.previews_profile(pv_profile)
    iso = previews.posterior(pv_profile, "depth", "isotropic")
    adam = steps.finetuned(pp, "depth", seed=0, progress=False)
    assert iso.k == 1 and all(torch.equal(p, torch.ones_like(p)) for p in iso.precisions[0].values())
    assert torch.equal(iso.means[0]["blocks.0.attn.qkv.weight"],
                       adam.tensors()["encoder.blocks.0.attn.qkv.weight"])
    sg = previews.posterior(pv_profile, "depth", "adamw_sg")
    assert torch.equal(sg.precisions[0]["blocks.0.mlp.fc1.weight"],
                       adam.tensors()["curvature.blocks.0.mlp.fc1.weight"])
    ivon = steps.finetuned(pp, "depth", seed=0, optimizer="ivon", progress=False)
    assert ivon.meta["config"]["optimizer"] == "ivon"
    post = previews.posterior(pv_profile, "depth", "ivon_hess")
    h = ivon.tensors()["curvature.blocks.0.mlp.fc1.weight"]
    assert torch.allclose(post.precisions[0]["blocks.0.mlp.fc1.weight"],
                          pp.finetune.ivon_ess * (h + pp.finetune.ivon_weight_decay))
    assert not torch.equal(post.means[0]["blocks.0.mlp.fc1.weight"],
                           sg.means[0]["blocks.0.mlp.fc1.weight"])  # a different run
    mix = previews.posterior(pv_profile, "depth", "multi_ivon_hess")
    assert mix.k == 2 and mix.weights == pytest.approx([0.5, 0.5])
    with pytest.raises(PreviewError, match="posterior kind"):
        previews.posterior(pv_profile, "depth", "laplace")
    with pytest.raises(TaskError, match="previews task"):
        previews.posterior(pv_profile, "normals", "isotropic")
    with pytest.raises(TaskError, match="optimizer"):
        steps.finetuned(pp, "depth", optimizer="sgd")


def test_weighted_run_trains_every_head_even_at_a_grid_end(cache_dir, pv_profile):
    from simo.errors import PreviewError

    art = previews.weighted_run(pv_profile, [1.0, 0.0], progress=False)
    weights = art.meta["config"]["weights"]
    assert {t: float(w) for t, w in weights.items()} == {"segmentation": 1.0, "depth": 0.0}
    assert set(steps.heads_of(art)) == {"segmentation", "depth"}
    assert all(v == v for v in art.meta["test"]["depth"].values())  # no NaN: the head was trained
    with pytest.raises(PreviewError, match="simplex|sum"):
        previews.weighted_run(pv_profile, [0.7, 0.7])


def test_preview_at_a_one_hot_alpha_is_that_task_model(cache_dir, make_profile, pv_profile):
    """With a negligible prior, α = (0, 1) previews exactly depth's own run, head and all."""
    prof = make_profile(**{**{f"previews.{k}": v for k, v in
                              dataclasses.asdict(pv_profile.previews).items()},
                           "previews.prior_rel": 1e-12})
    grid = previews.preview_grid(prof, "ivon_hess")
    assert [tuple(a) for a in grid["alphas"]] == [(0.0, 1.0), (0.5, 0.5), (1.0, 0.0)]
    assert len(grid["original"]) == len(grid["realigned"]) == 3
    own = steps.finetuned(previews.previews_profile(prof), "depth", optimizer="ivon",
                             progress=False).meta["test"]["depth"]
    for m, v in own.items():
        assert grid["original"][0]["depth"][m] == pytest.approx(v, rel=1e-4)
    assert grid["realigned"][0]["depth"] != grid["original"][0]["depth"]  # heads moved
    assert set(grid["seconds"]) == {"merge", "evaluate", "realign"}


def test_sensitivity_joins_the_default_and_checks_values():
    p = load_profile("smoke", {"previews.prior_rel": 0.1, "previews.sensitivity": [
        {"name": "prior", "key": "previews.prior_rel", "values": [1.0, 1e-3]}]})
    ((name, key, vals),) = previews.sensitivity(p)
    assert (name, key) == ("prior", "previews.prior_rel")
    assert [v for v, _ in vals] == [1e-3, 0.1, 1.0]  # sorted, the profile's own value included
    assert [q.previews.prior_rel for _, q in vals] == [1e-3, 0.1, 1.0]
    assert vals[1][1] == p and vals[0][1].previews.realign_steps == p.previews.realign_steps
    bad = load_profile("smoke", {"previews.sensitivity": [
        {"name": "prior", "key": "previews.prior_rel", "values": [-1.0]}]})
    with pytest.raises(ConfigError, match="knob 'prior', value -1.0: previews.prior_rel must be > 0"):
        previews.sensitivity(bad)
