"""The cached training steps: pretraining, finetuning, joint MTL (simo.steps)."""
from __future__ import annotations

import pytest
import torch

from simo import cache, steps
from simo.data import make_dataset
from simo.errors import TaskError, TrainingError
from simo.train import evaluate

@pytest.fixture(scope="module")
def depth_art(cache_dir, smoke):
    return steps.finetuned(smoke, "depth", progress=False)


def test_finetuned_is_computed_once(cache_dir, smoke, depth_art, monkeypatch):
    monkeypatch.setattr(cache, "STATS", {"hits": 0, "misses": 0})
    again = steps.finetuned(smoke, "depth", progress=False)
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
    assert meta["config"]["pretrained"] == steps.pretrained(smoke, progress=False).key


def test_other_seed_is_another_artifact(smoke, depth_art):
    other = steps.finetuned(smoke, "depth", seed=1, progress=False)
    assert other.key != depth_art.key
    assert not torch.equal(other.tensors()["head.depth.proj.weight"],
                           depth_art.tensors()["head.depth.proj.weight"])


def test_load_finetuned_reproduces_stored_metrics(smoke, depth_art):
    model = steps.load_finetuned(smoke, depth_art)
    assert list(model.heads) == ["depth"]
    tasks = steps.tasks_of(smoke, ["depth"])
    test = make_dataset(smoke, "test")
    got = evaluate(model, tasks, test, smoke.eval_batch_size)
    want = depth_art.meta["test"]
    for m, v in want["depth"].items():
        assert got["depth"][m] == pytest.approx(v, rel=1e-6, abs=1e-9)
    # the stored encoder is the finetuned one, not the pretrained one
    pre = steps.pretrained(smoke, progress=False).tensors()
    enc = model.encoder.vit.state_dict()
    assert set(enc) == set(pre)
    assert not torch.equal(enc["blocks.0.attn.qkv.weight"], pre["blocks.0.attn.qkv.weight"])
    assert all(not p.requires_grad for p in model.encoder.vit.norm.parameters())


def test_heads_of_returns_per_task_state_dicts(smoke, depth_art):
    heads = steps.heads_of(depth_art)
    assert list(heads) == ["depth"]
    model = steps.build_model(smoke, steps.tasks_of(smoke, ["depth"]))
    assert set(heads["depth"]) == set(model.heads["depth"].state_dict())
    tensors = depth_art.tensors()
    assert torch.equal(heads["depth"]["proj.weight"], tensors["head.depth.proj.weight"])
    assert not any(k.startswith("head.") for k in depth_art.tensors("encoder."))


def test_multitask_stores_every_head(cache_dir, smoke):
    art = steps.finetuned(smoke, ["depth", "normals"], progress=False)
    assert art.path.parent == cache_dir / "multitask"
    heads = steps.heads_of(art)
    assert set(heads) == {"depth", "normals"}
    assert heads["depth"]["proj.weight"].shape[0] == 1
    assert heads["normals"]["proj.weight"].shape[0] == 3
    assert set(art.meta["test"]) == {"depth", "normals"}
    model = steps.load_finetuned(smoke, art)
    assert set(model.heads) == {"depth", "normals"}
    x = make_dataset(smoke, "test")["image"][:2]
    with torch.no_grad():
        out = model(x)
    assert out["normals"].shape == (2, 3, 32, 32) and out["depth"].shape == (2, 1, 32, 32)


def test_scratch_init_needs_no_pretraining(tmp_cache, smoke):
    art = steps.finetuned(smoke, "depth", init="scratch", progress=False)
    assert not (tmp_cache / "pretrained").exists()
    assert art.meta["config"]["init"] == "scratch" and art.meta["config"]["pretrained"] is None
    pre = steps.finetuned(smoke, "depth", init="pretrained", progress=False)
    assert (tmp_cache / "pretrained").is_dir()
    assert pre.key != art.key
    w = "encoder.blocks.0.attn.qkv.weight"
    assert not torch.equal(art.tensors()[w], pre.tensors()[w])


def test_unknown_init_and_task(smoke):
    with pytest.raises(TaskError) as ei:
        steps.finetuned(smoke, "depth", init="imagenet", progress=False)
    msg = str(ei.value)
    assert "'imagenet'" in msg and "pretrained" in msg and "scratch" in msg and "\n" not in msg
    with pytest.raises(TaskError, match="choose one of"):
        steps.finetuned(smoke, "colour", progress=False)


def test_tasks_of_defaults_to_the_profile(smoke):
    assert [t.name for t in steps.tasks_of(smoke)] == list(smoke.tasks)
    seg = steps.tasks_of(smoke, ["segmentation"])[0]
    assert seg.channels == smoke.data.num_classes


def test_joint_mtl_uses_its_own_step_budget_and_weights(cache_dir, make_profile):
    p = make_profile(**{"finetune.mtl_steps": 7})
    art = steps.finetuned(p, ["segmentation", "depth"], progress=False)
    assert art.meta["steps"] == p.finetune.head_steps + 7
    single = steps.finetuned(p, "depth", progress=False)
    assert single.meta["steps"] == p.finetune.head_steps + p.finetune.steps
    # the MTL step budget does not enter single-task keys
    assert single.key == steps.finetuned(make_profile(), "depth", progress=False).key
    w = steps.finetuned(p, ["segmentation", "depth"], weights={"segmentation": 0.2,
                                                                  "depth": 0.8}, progress=False)
    u = steps.finetuned(p, ["segmentation", "depth"], weighting="uncertainty", progress=False)
    assert len({art.key, w.key, u.key}) == 3
    assert "weight/depth" in u.meta["history"][-1]


def test_joint_mtl_rejects_bad_weights(cache_dir, make_profile):
    with pytest.raises(TrainingError, match="not a task of this run"):
        steps.finetuned(make_profile(), ["segmentation", "depth"], weights={"normals": 1.0})
    with pytest.raises(TaskError, match="weighting"):
        steps.finetuned(make_profile(), ["segmentation", "depth"], weighting="gradnorm")


def test_pretraining_is_shared_across_head_settings(cache_dir, make_profile):
    """Heads and feature taps do not enter the pretrained encoder's key: no needless re-pretraining."""
    a = steps.pretrained(make_profile(), progress=False)
    b = steps.pretrained(make_profile(**{"model.head_bn": True, "model.feature_blocks": [1]}),
                            progress=False)
    assert a.key == b.key
    c = steps.pretrained(make_profile(**{"model.embed_dim": 64}), progress=False)
    assert c.key != a.key
