"""The previews' cached steps: posteriors, weighted runs, preview grids (simo.previews.grids)."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from simo import cache, previews, steps
from simo.previews import grids
from simo.config import load_profile, with_settings
from simo.data import make_dataset
from simo.errors import ConfigError, PreviewError, TaskError
from simo.merged import fisher_of
from simo.models import build_model
from simo.realign import evaluate_encoders

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
    sg = previews.posterior(pv_profile, "depth", "adamw_sg")  # smoke: gradsq, unclipped g²
    assert pv_profile.previews.sg_estimator == "gradsq"
    g2 = fisher_of(pp, adam, "depth", 0, batches=pv_profile.previews.sg_batches)
    assert torch.equal(sg.precisions[0]["blocks.0.mlp.fc1.weight"], g2["blocks.0.mlp.fc1.weight"])
    from_adam = previews.posterior(with_settings(pv_profile, {"previews.sg_estimator": "adam"}),
                                   "depth", "adamw_sg")
    assert torch.equal(from_adam.precisions[0]["blocks.0.mlp.fc1.weight"],
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
    assert grid["components"] == [{"segmentation": 0, "depth": 0}] * 3  # K = 1: the only run


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


def test_previewer_reads_each_task_with_the_heads_of_its_em_component(cache_dir, pv_profile):
    """Untrained models of seeds 0 and 1 as two 'runs': segmentation's posterior mixes both (π
    favours run 0), depth's sits sharply on run 1's encoder, so at α = (½, ½) the preview lands on
    run 1 and segmentation must be read with run 1's heads, not run 0's."""
    pp = previews.previews_profile(pv_profile)
    tasks = steps.tasks_of(pp)
    models = [build_model(pp, tasks, seed=k) for k in (0, 1)]
    encs = [{k: v.detach().clone() for k, v in m.encoder.vit.state_dict().items()} for m in models]
    heads = [{t.name: {k: v.detach().clone() for k, v in m.heads[t.name].state_dict().items()}
              for t in tasks} for m in models]
    ones = lambda sd, c: {k: torch.full_like(v, c) if v.is_floating_point() else v  # noqa: E731
                          for k, v in sd.items()}
    posts = [previews.Posterior(encs, [ones(e, 1.0) for e in encs], [0.9, 0.1]),
             previews.gaussian(encs[1], ones(encs[1], 1e3))]
    at = previews.Previewer(pp, tasks, posts,
                            {"segmentation": [heads[0]["segmentation"], heads[1]["segmentation"]],
                             "depth": [heads[1]["depth"]]},
                            encs[0], 1e-6, {}, 0)
    data = make_dataset(pp, "test")
    out = at([0.5, 0.5], data, realign=False)
    assert out["components"] == {"segmentation": 1, "depth": 0} and out["realigned"] is None
    merged = previews.preview(posts, [0.5, 0.5], encs[0], 1e-6, iters=pp.previews.em_iters)
    shared = {t.name: merged for t in tasks}
    with_run = [evaluate_encoders(pp, tasks, shared, {"segmentation": h["segmentation"],
                                                      "depth": heads[1]["depth"]}, data)
                for h in heads]
    assert out["original"] == with_run[1] and out["original"] != with_run[0]
    at0 = at([1.0, 0.0], data, realign=False)  # depth unweighted: segmentation stays in run 0
    assert at0["components"] == {"segmentation": 0, "depth": 0}
    with pytest.raises(PreviewError, match="2-component posterior"):
        previews.Previewer(pp, tasks, posts, {"segmentation": [heads[0]["segmentation"]],
                                              "depth": [heads[1]["depth"]]}, encs[0], 1e-6, {})


def test_sgd_ground_truth_chooses_its_lr_on_validation(cache_dir, pv_profile):
    pp = previews.previews_profile(pv_profile)
    choice = previews.sgd_lr_choice(pv_profile)
    n = len(previews.SGD_LRS)
    assert choice["lrs"] == list(previews.SGD_LRS) and len(choice["val_points"]) == n
    best = choice["lrs"].index(choice["lr"])
    assert choice["val_points"][best] == max(choice["val_points"])
    assert choice["edge"] == (best in (0, n - 1)) and previews.sgd_lr(pv_profile) == choice["lr"]
    art = previews.weighted_run(pv_profile, [1.0, 0.0], optimizer="sgd", progress=False)
    meta = art.meta
    assert meta["lr"] == choice["lr"] and meta["config"]["optimizer"] == "sgd"
    assert {"history", "steps", "samples", "seconds", "val", "test"} <= set(meta)
    assert meta["steps"] == pp.finetune.head_steps + pp.finetune.steps
    assert set(steps.heads_of(art)) == {"segmentation", "depth"}
    assert all(v == v for v in meta["test"]["depth"].values())  # trained in the head phase
    adam = previews.weighted_run(pv_profile, [1.0, 0.0], progress=False)
    assert adam.key == steps.finetuned(pp, list(pp.tasks), weights={"segmentation": 1.0,
                                                                    "depth": 0.0},
                                       progress=False).key  # AdamW's truth: the same step
    enc = lambda a: a.tensors("encoder.")["blocks.0.mlp.fc1.weight"]  # noqa: E731
    assert not torch.equal(enc(art), enc(adam))
    # α_depth = 0: SGD gives depth's head no gradient, so any lr leaves it as the head phase did
    other = previews.sgd_run(pv_profile, [1.0, 0.0], 0, 0.5, progress=False)
    same, moved = steps.heads_of(other), steps.heads_of(art)
    assert all(torch.equal(same["depth"][k], moved["depth"][k]) for k in same["depth"])
    assert not all(torch.equal(same["segmentation"][k], moved["segmentation"][k])
                   for k in same["segmentation"])
    with pytest.raises(PreviewError, match="ground-truth optimizer"):
        previews.weighted_run(pv_profile, [0.5, 0.5], optimizer="adam")
    with pytest.raises(PreviewError, match="lr=0"):
        previews.sgd_run(pv_profile, [0.5, 0.5], 0, 0)


def test_sgd_run_resumes_from_its_checkpoint_bit_for_bit(cache_dir, pv_profile, tmp_path):
    """A killed SGD run resumes from its partial checkpoint (momentum buffers included) and ends
    where the uninterrupted run ends: the first run leaves its last checkpoint behind, and a model
    with other initial heads (seed 1) started on it must reach the same weights."""
    pp = previews.previews_profile(pv_profile)
    tasks = steps.tasks_of(pp)
    data = {s: make_dataset(pp, s) for s in ("train", "val")}
    base = steps.pretrained(pp).tensors()
    finals = []
    for init in (0, 1):
        model = steps.model_from(pp, tasks, base, seed=init)
        res = grids._train_sgd(pp, model, tasks, {"segmentation": 0.3, "depth": 0.7},
                               data["train"], data["val"], 0, 0.05, tmp_path, "sgd", False)
        finals.append({k: v.clone() for k, v in model.state_dict().items()})
    ckpt = cache.load_json(tmp_path / "ckpt.json")
    assert 0 < ckpt["step"] < res.steps and ckpt["step"] > pp.finetune.head_steps  # full phase
    assert any("momentum_buffer" in k for k in cache.load_tensors(tmp_path / "ckpt.safetensors"))
    assert all(torch.equal(finals[0][k], finals[1][k]) for k in finals[0])
