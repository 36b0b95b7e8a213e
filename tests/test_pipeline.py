"""Pipeline steps on the tiny smoke profile: cached finetunes, reloading, scratch init, multi-task."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from simo import cache, pipeline
from simo.data import make_dataset
from simo.config import load_profile
from simo.errors import ConfigError, MergeError, TaskError, TrainingError
from simo.train import evaluate


@pytest.fixture(scope="module")
def depth_art(cache_dir, smoke):
    return pipeline.finetuned(smoke, "depth", progress=False)


def test_finetuned_is_computed_once(cache_dir, smoke, depth_art, monkeypatch):
    monkeypatch.setattr(cache, "STATS", {"hits": 0, "misses": 0})
    again = pipeline.finetuned(smoke, "depth", progress=False)
    assert again.key == depth_art.key and again.path == depth_art.path
    assert cache.STATS["misses"] == 0 and cache.STATS["hits"] == 2  # pretrained + finetuned
    assert depth_art.path.parent == cache_dir / "finetuned"
    assert (cache_dir / "pretrained").is_dir()
    assert not list(cache_dir.rglob("*.tmp-*")) and not list(cache_dir.rglob("*.partial"))


def test_finetuned_meta(smoke, depth_art):
    meta = depth_art.meta
    ft = smoke.finetune
    assert meta["steps"] == ft.head_steps + ft.steps
    assert 0 < meta["samples"] <= smoke.data.n_train
    assert [h["step"] for h in meta["history"]] == [2, 4, 6]
    assert set(meta["val"]) == set(meta["test"]) == {"depth"}
    assert set(meta["test"]["depth"]) == {"abs_err", "rel_err"}
    assert meta["config"]["tasks"] == ["depth"] and meta["config"]["init"] == "pretrained"
    assert meta["config"]["pretrained"] == pipeline.pretrained(smoke, progress=False).key


def test_other_seed_is_another_artifact(smoke, depth_art):
    other = pipeline.finetuned(smoke, "depth", seed=1, progress=False)
    assert other.key != depth_art.key
    assert not torch.equal(other.tensors()["head.depth.proj.weight"],
                           depth_art.tensors()["head.depth.proj.weight"])


def test_load_finetuned_reproduces_stored_metrics(smoke, depth_art):
    model = pipeline.load_finetuned(smoke, depth_art)
    assert list(model.heads) == ["depth"]
    tasks = pipeline.tasks_of(smoke, ["depth"])
    test = make_dataset(smoke, "test")
    got = evaluate(model, tasks, test, smoke.eval_batch_size)
    want = depth_art.meta["test"]
    for m, v in want["depth"].items():
        assert got["depth"][m] == pytest.approx(v, rel=1e-6, abs=1e-9)
    # the stored encoder is the finetuned one, not the pretrained one
    pre = pipeline.pretrained(smoke, progress=False).tensors()
    enc = model.encoder.vit.state_dict()
    assert set(enc) == set(pre)
    assert not torch.equal(enc["blocks.0.attn.qkv.weight"], pre["blocks.0.attn.qkv.weight"])
    assert all(not p.requires_grad for p in model.encoder.vit.norm.parameters())


def test_heads_of_returns_per_task_state_dicts(smoke, depth_art):
    heads = pipeline.heads_of(depth_art)
    assert list(heads) == ["depth"]
    model = pipeline.build_model(smoke, pipeline.tasks_of(smoke, ["depth"]))
    assert set(heads["depth"]) == set(model.heads["depth"].state_dict())
    tensors = depth_art.tensors()
    assert torch.equal(heads["depth"]["proj.weight"], tensors["head.depth.proj.weight"])
    assert not any(k.startswith("head.") for k in depth_art.tensors("encoder."))


def test_multitask_stores_every_head(cache_dir, smoke):
    art = pipeline.finetuned(smoke, ["depth", "normals"], progress=False)
    assert art.path.parent == cache_dir / "multitask"
    heads = pipeline.heads_of(art)
    assert set(heads) == {"depth", "normals"}
    assert heads["depth"]["proj.weight"].shape[0] == 1
    assert heads["normals"]["proj.weight"].shape[0] == 3
    assert set(art.meta["test"]) == {"depth", "normals"}
    model = pipeline.load_finetuned(smoke, art)
    assert set(model.heads) == {"depth", "normals"}
    x = make_dataset(smoke, "test")["image"][:2]
    with torch.no_grad():
        out = model(x)
    assert out["normals"].shape == (2, 3, 32, 32) and out["depth"].shape == (2, 1, 32, 32)


def test_scratch_init_needs_no_pretraining(tmp_cache, smoke):
    art = pipeline.finetuned(smoke, "depth", init="scratch", progress=False)
    assert not (tmp_cache / "pretrained").exists()
    assert art.meta["config"]["init"] == "scratch" and art.meta["config"]["pretrained"] is None
    pre = pipeline.finetuned(smoke, "depth", init="pretrained", progress=False)
    assert (tmp_cache / "pretrained").is_dir()
    assert pre.key != art.key
    w = "encoder.blocks.0.attn.qkv.weight"
    assert not torch.equal(art.tensors()[w], pre.tensors()[w])


def test_unknown_init_and_task(smoke):
    with pytest.raises(TaskError) as ei:
        pipeline.finetuned(smoke, "depth", init="imagenet", progress=False)
    msg = str(ei.value)
    assert "'imagenet'" in msg and "pretrained" in msg and "scratch" in msg and "\n" not in msg
    with pytest.raises(TaskError, match="choose one of"):
        pipeline.finetuned(smoke, "colour", progress=False)


def test_tasks_of_defaults_to_the_profile(smoke):
    assert [t.name for t in pipeline.tasks_of(smoke)] == list(smoke.tasks)
    seg = pipeline.tasks_of(smoke, ["segmentation"])[0]
    assert seg.channels == smoke.data.num_classes


# ------------------------------------------------------------------ merging setup -----------------

@pytest.fixture(scope="module")
def setup(cache_dir, make_profile):
    p = make_profile(**{"tasks": ["segmentation", "depth"], "merging.fisher_batches": 1,
                        "realign.n_samples": 8, "realign.head_steps": 3, "realign.batch_size": 4})
    return pipeline.merge_setup(p, seed=0, with_fisher=True)


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
    got = setup.evaluate("single_task", 1.0, "test")
    stored = pipeline.finetuned(setup.profile, "depth", progress=False).meta["test"]["depth"]
    assert got["depth"] == pytest.approx(stored, rel=1e-5)


def test_head_realignment_changes_heads_not_encoder(setup):
    data = make_dataset(setup.profile, "train")
    enc = setup.encoders("task_arithmetic", 0.5)
    before = {k: v.clone() for k, v in enc["depth"].items()}
    heads, cost = pipeline.realign_heads(setup.profile, setup.tasks, enc, setup.heads, data,
                                         seed=0)
    assert cost["steps"] == setup.profile.realign.head_steps  # one shared encoder: one run
    assert 0 < cost["samples"] <= len(data["image"])
    assert any(not torch.equal(heads["depth"][k], setup.heads["depth"][k]) for k in heads["depth"])
    assert all(torch.equal(enc["depth"][k], before[k]) for k in before)
    # deterministic per seed
    again, _ = pipeline.realign_heads(setup.profile, setup.tasks, enc, setup.heads, data, seed=0)
    assert all(torch.equal(heads["depth"][k], again["depth"][k]) for k in heads["depth"])


def test_evaluations_are_cached_and_keyed_by_method_and_lambda(setup, cache_dir):
    a = setup.evaluate("task_arithmetic", 0.5, "val")
    hits = cache.STATS["hits"]
    assert setup.evaluate("task_arithmetic", 0.5, "val") == a
    assert cache.STATS["hits"] == hits + 1
    assert setup.evaluate("task_arithmetic", 0.0, "val") != a
    r = setup.realigned("task_arithmetic", 0.5, "val")
    assert set(r) == set(setup.names) and r != a
    hits = cache.STATS["hits"]
    assert setup.realigned("task_arithmetic", 0.5, "test") == setup.realign("task_arithmetic", 0.5)["test"]
    assert cache.STATS["hits"] == hits + 2  # val and test come from one realignment


def test_realignment_cache_is_keyed_by_the_realignment_budget(setup):
    import dataclasses

    short = dataclasses.replace(setup.profile, realign=dataclasses.replace(
        setup.profile.realign, head_steps=2, adapter_steps=3))
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


def test_representation_realignment_needs_a_shared_encoder(setup):
    with pytest.raises(MergeError, match="one shared encoder"):
        setup.realign("tall_mask", 0.5, kind="repr")
    with pytest.raises(MergeError, match="realignment kind"):
        setup.realign("task_arithmetic", 0.5, kind="lora")


def test_joint_mtl_uses_its_own_step_budget_and_weights(cache_dir, make_profile):
    p = make_profile(**{"finetune.mtl_steps": 7})
    art = pipeline.finetuned(p, ["segmentation", "depth"], progress=False)
    assert art.meta["steps"] == p.finetune.head_steps + 7
    single = pipeline.finetuned(p, "depth", progress=False)
    assert single.meta["steps"] == p.finetune.head_steps + p.finetune.steps
    # the MTL step budget does not enter single-task keys
    assert single.key == pipeline.finetuned(make_profile(), "depth", progress=False).key
    w = pipeline.finetuned(p, ["segmentation", "depth"], weights={"segmentation": 0.2,
                                                                  "depth": 0.8}, progress=False)
    u = pipeline.finetuned(p, ["segmentation", "depth"], weighting="uncertainty", progress=False)
    assert len({art.key, w.key, u.key}) == 3
    assert "weight/depth" in u.meta["history"][-1]


def test_joint_mtl_rejects_bad_weights(cache_dir, make_profile):
    with pytest.raises(TrainingError, match="not a task of this run"):
        pipeline.finetuned(make_profile(), ["segmentation", "depth"], weights={"normals": 1.0})
    with pytest.raises(TaskError, match="weighting"):
        pipeline.finetuned(make_profile(), ["segmentation", "depth"], weighting="gradnorm")


def test_realignment_set_is_a_seeded_train_subset(setup):
    small = setup.data("small")
    assert len(small["image"]) == setup.profile.realign.n_samples
    assert torch.equal(small["image"], setup.data("small")["image"])


def test_pretraining_is_shared_across_head_settings(cache_dir, make_profile):
    """Heads and feature taps do not enter the pretrained encoder's key: no needless re-pretraining."""
    a = pipeline.pretrained(make_profile(), progress=False)
    b = pipeline.pretrained(make_profile(**{"model.head_bn": True, "model.feature_blocks": [1]}),
                            progress=False)
    assert a.key == b.key
    c = pipeline.pretrained(make_profile(**{"model.embed_dim": 64}), progress=False)
    assert c.key != a.key


def test_sweep_at_lambda_one_of_its_own_vector_is_the_single_task_model(setup):
    own = setup.sweep("depth", 1.0)["depth"]
    assert own == pytest.approx(setup.evaluate("single_task", 1.0, "val")["depth"], rel=1e-5)
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


# ------------------------------------------------------------------------------- previews (05)
@pytest.fixture(scope="module")
def pv_profile(make_profile):
    return make_profile(**{"previews.tasks": ["segmentation", "depth"], "previews.n_alpha": 3,
                           "previews.seeds": [0, 1], "previews.components": 2,
                           "previews.realign_samples": 8, "previews.realign_steps": 2,
                           "previews.em_iters": 3})


def test_posteriors_of_each_kind(cache_dir, pv_profile):
    pp, pv = pipeline.previews_profile(pv_profile), pv_profile.previews
    iso = pipeline.posterior(pv_profile, "depth", "isotropic")
    adam = pipeline.finetuned(pp, "depth", seed=0, progress=False)
    assert iso.k == 1 and all(torch.equal(p, torch.ones_like(p)) for p in iso.precisions[0].values())
    assert torch.equal(iso.means[0]["blocks.0.attn.qkv.weight"],
                       adam.tensors()["encoder.blocks.0.attn.qkv.weight"])
    sg = pipeline.posterior(pv_profile, "depth", "adamw_sg")
    assert torch.equal(sg.precisions[0]["blocks.0.mlp.fc1.weight"],
                       adam.tensors()["curvature.blocks.0.mlp.fc1.weight"])
    ivon = pipeline.finetuned(pp, "depth", seed=0, optimizer="ivon", progress=False)
    assert ivon.meta["config"]["optimizer"] == "ivon"
    post = pipeline.posterior(pv_profile, "depth", "ivon_hess")
    h = ivon.tensors()["curvature.blocks.0.mlp.fc1.weight"]
    assert torch.allclose(post.precisions[0]["blocks.0.mlp.fc1.weight"],
                          pv.ivon_ess * (h + pv.ivon_weight_decay))
    assert not torch.equal(post.means[0]["blocks.0.mlp.fc1.weight"],
                           sg.means[0]["blocks.0.mlp.fc1.weight"])  # a different run
    mix = pipeline.posterior(pv_profile, "depth", "multi_ivon_hess")
    assert mix.k == 2 and mix.weights == pytest.approx([0.5, 0.5])
    with pytest.raises(MergeError, match="posterior kind"):
        pipeline.posterior(pv_profile, "depth", "laplace")
    with pytest.raises(TaskError, match="previews task"):
        pipeline.posterior(pv_profile, "normals", "isotropic")
    with pytest.raises(TaskError, match="optimizer"):
        pipeline.finetuned(pp, "depth", optimizer="sgd")


def test_weighted_run_trains_every_head_even_at_a_grid_end(cache_dir, pv_profile):
    from simo.errors import PreviewError

    art = pipeline.weighted_run(pv_profile, [1.0, 0.0], progress=False)
    weights = art.meta["config"]["weights"]
    assert {t: float(w) for t, w in weights.items()} == {"segmentation": 1.0, "depth": 0.0}
    assert set(pipeline.heads_of(art)) == {"segmentation", "depth"}
    assert all(v == v for v in art.meta["test"]["depth"].values())  # no NaN: the head was trained
    with pytest.raises(PreviewError, match="simplex|sum"):
        pipeline.weighted_run(pv_profile, [0.7, 0.7])


def test_preview_at_a_one_hot_alpha_is_that_task_model(cache_dir, make_profile, pv_profile):
    """With a negligible prior, α = (0, 1) previews exactly depth's own run, head and all."""
    prof = make_profile(**{**{f"previews.{k}": v for k, v in
                              dataclasses.asdict(pv_profile.previews).items()},
                           "previews.prior_rel": 1e-12})
    grid = pipeline.preview_grid(prof, "ivon_hess")
    assert [tuple(a) for a in grid["alphas"]] == [(0.0, 1.0), (0.5, 0.5), (1.0, 0.0)]
    assert len(grid["original"]) == len(grid["realigned"]) == 3
    own = pipeline.finetuned(pipeline.previews_profile(prof), "depth", optimizer="ivon",
                             progress=False).meta["test"]["depth"]
    for m, v in own.items():
        assert grid["original"][0]["depth"][m] == pytest.approx(v, rel=1e-4)
    assert grid["realigned"][0]["depth"] != grid["original"][0]["depth"]  # heads moved
    assert set(grid["seconds"]) == {"merge", "evaluate", "realign"}


def test_sensitivity_joins_the_default_and_checks_values():
    p = load_profile("smoke", {"previews.prior_rel": 0.1, "previews.sensitivity": [
        {"name": "prior", "key": "previews.prior_rel", "values": [1.0, 1e-3]}]})
    ((name, key, vals),) = pipeline.sensitivity(p)
    assert (name, key) == ("prior", "previews.prior_rel")
    assert [v for v, _ in vals] == [1e-3, 0.1, 1.0]  # sorted, the profile's own value included
    assert [q.previews.prior_rel for _, q in vals] == [1e-3, 0.1, 1.0]
    assert vals[1][1] == p and vals[0][1].previews.realign_steps == p.previews.realign_steps
    bad = load_profile("smoke", {"previews.sensitivity": [
        {"name": "prior", "key": "previews.prior_rel", "values": [-1.0]}]})
    with pytest.raises(ConfigError, match="knob 'prior', value -1.0: previews.prior_rel must be > 0"):
        pipeline.sensitivity(bad)
