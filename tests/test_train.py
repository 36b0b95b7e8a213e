"""The training loop: schedule, flips, two-phase finetuning, NaN detection, exact resume, SimMIM."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from simo import train
from simo.config import PretrainConfig
from simo.data import make_dataset
from simo.errors import TrainingError
from simo.models import build_encoder, build_model
from simo.steps import ivon_settings
from simo.tasks import get_tasks
from simo.train import evaluate, finetune, lr_factor, pretrain, sample_batch


@pytest.fixture(scope="module")
def scenes(smoke, tmp_path_factory):
    """(profile, train, val) of the tiny smoke profile, rendered once for this module."""
    p = smoke
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SIMO_CACHE", str(tmp_path_factory.mktemp("cache")))
        return p, make_dataset(p, "train"), make_dataset(p, "val")


def _run(profile, tasks, train_data, val, seed=0, **kw):
    model = build_model(profile, tasks, seed=seed)
    res = finetune(model, tasks, train_data, val, kw.pop("cfg", profile.finetune), seed=seed,
                   eval_batch_size=8, progress=False, **kw)
    return model, res


@pytest.fixture(scope="module")
def depth_run(scenes):
    """(model, result) of one default AdamW finetune on depth, for the tests that only read it."""
    p, tr, val = scenes
    return _run(p, get_tasks(["depth"]), tr, val)


# ------------------------------------------------------------------------------- schedule


def test_lr_factor_warmup_then_cosine():
    total, warm = 10, 4
    assert [lr_factor(s, total, warm) for s in range(warm)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(warm, total, warm) == 1.0  # cosine starts at the peak
    assert lr_factor(warm + 3, total, warm) == pytest.approx(0.5)  # half-way through the decay
    assert lr_factor(total, total, warm) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(total + 5, total, warm) == pytest.approx(0.0, abs=1e-12)  # never negative
    decay = [lr_factor(s, total, warm) for s in range(warm, total)]
    assert all(a > b for a, b in zip(decay, decay[1:]))
    assert all(0 < f <= 1 for f in decay)


def test_lr_factor_without_warmup():
    assert lr_factor(0, 8, 0) == 1.0
    assert lr_factor(4, 8, 0) == pytest.approx(0.5)
    assert lr_factor(2, 8, 0) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_factor(0, 1, 1) == 1.0 and lr_factor(0, 0, 0) == 1.0  # degenerate totals


# ------------------------------------------------------------------------------- batches


def _fields(n: int = 6, size: int = 8) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"image": torch.rand(n, 3, size, size, generator=g),
            "label": torch.randint(0, 6, (n, size, size), generator=g),
            "depth": torch.rand(n, 1, size, size, generator=g) + 0.5,
            "normal": torch.nn.functional.normalize(torch.randn(n, 3, size, size, generator=g),
                                                    dim=1)}


def _mirror(sample: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {k: v.flip(-1) for k, v in sample.items()}
    out["normal"] = out["normal"] * torch.tensor([-1.0, 1.0, 1.0])[:, None, None]
    return out


def test_sample_batch_without_flip_indexes_the_data():
    data = _fields()
    batch, idx = sample_batch(data, 10, torch.Generator().manual_seed(1), flip=False)
    assert idx.shape == (10,) and idx.dtype == torch.int64 and idx.max() < 6
    for k, v in data.items():
        assert torch.equal(batch[k], v[idx])


def test_sample_batch_flips_all_fields_consistently():
    data = _fields()
    batch, idx = sample_batch(data, 64, torch.Generator().manual_seed(2))
    flipped = 0
    for i, j in enumerate(idx.tolist()):
        plain = {k: v[j] for k, v in data.items()}
        mirrored = _mirror(plain)
        got = {k: v[i] for k, v in batch.items()}
        if all(torch.equal(got[k], plain[k]) for k in data):
            continue
        assert all(torch.equal(got[k], mirrored[k]) for k in data), f"sample {i} half-flipped"
        flipped += 1
    assert 10 < flipped < 54  # about half the samples are mirrored
    # dtypes and unit normals survive
    assert batch["label"].dtype == torch.int64
    torch.testing.assert_close(batch["normal"].norm(dim=1), torch.ones(64, 8, 8))


def test_sample_batch_is_a_function_of_the_generator():
    data = _fields()
    a, ia = sample_batch(data, 8, train.step_generator(3, 7))
    b, ib = sample_batch(data, 8, train.step_generator(3, 7))
    c, ic = sample_batch(data, 8, train.step_generator(3, 8))
    assert torch.equal(ia, ib) and all(torch.equal(a[k], b[k]) for k in a)
    assert not (torch.equal(ia, ic) and all(torch.equal(a[k], c[k]) for k in a))


# ------------------------------------------------------------------------------- finetune


def test_finetune_lowers_the_training_loss(scenes):
    p, tr, val = scenes
    cfg = dataclasses.replace(p.finetune, head_steps=4, steps=16, eval_every=4, ckpt_every=0,
                              warmup=2)
    tasks = get_tasks(["depth"])
    _, res = _run(p, tasks, tr, val, cfg=cfg)
    hist = res.history
    assert [h["step"] for h in hist] == [4, 8, 12, 16, 20]
    assert [h["phase"] for h in hist] == ["head"] + ["full"] * 4
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert all(set(h["val"]) == {"depth"} for h in hist)
    assert res.steps == cfg.head_steps + cfg.steps == 20
    assert 0 < res.samples <= len(tr["image"])
    assert res.seconds > 0


def test_head_phase_leaves_the_encoder_untouched(scenes):
    p, tr, val = scenes
    tasks = get_tasks(["depth", "normals"])
    model = build_model(p, tasks, seed=0)
    enc0 = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    heads0 = {k: v.clone() for k, v in model.heads.state_dict().items()}
    cfg = dataclasses.replace(p.finetune, head_steps=3, steps=0)
    res = finetune(model, tasks, tr, val, cfg, seed=0, progress=False)
    assert res.steps == 3
    for k, v in model.encoder.state_dict().items():
        assert torch.equal(v, enc0[k]), k
    changed = [k for k, v in model.heads.state_dict().items() if not torch.equal(v, heads0[k])]
    assert any(k.startswith("depth.") for k in changed)
    assert any(k.startswith("normals.") for k in changed)


def test_finetune_keeps_the_final_norm_frozen(depth_run):
    model, _ = depth_run
    assert all(not q.requires_grad for q in model.encoder.vit.norm.parameters())
    assert all(q.requires_grad for q in model.heads.parameters())
    assert all(q.requires_grad for n, q in model.encoder.vit.named_parameters()
               if not n.startswith("norm."))


def test_full_phase_trains_the_encoder(scenes, depth_run):
    model, _ = depth_run
    ref = build_model(scenes[0], get_tasks(["depth"]), seed=0)
    w = "vit.blocks.0.attn.qkv.weight"
    assert not torch.equal(model.encoder.state_dict()[w], ref.encoder.state_dict()[w])


def test_nan_in_the_data_is_a_training_error(scenes):
    p, tr, val = scenes
    bad = {k: v.clone() for k, v in tr.items()}
    bad["image"][:] = float("nan")
    with pytest.raises(TrainingError) as ei:
        _run(p, get_tasks(["depth"]), bad, val)
    msg = str(ei.value)
    assert "\n" not in msg
    assert "step 0" in msg and "head phase" in msg and "lower the learning rate" in msg


def test_huge_learning_rate_is_a_training_error(scenes):
    p, tr, val = scenes
    cfg = dataclasses.replace(p.finetune, head_steps=1, steps=20, lr=1e30, warmup=0)
    with pytest.raises(TrainingError) as ei:
        _run(p, get_tasks(["depth"]), tr, val, cfg=cfg)
    msg = str(ei.value)
    assert "full phase" in msg and "lower the learning rate" in msg
    step = int(msg.split(" at step ")[1].split()[0])
    assert 1 <= step < 21


# ------------------------------------------------------------------------------- resume


@pytest.mark.parametrize("crash_at,ckpt_step,optimizer",
                         [(5, 4, "adamw"), (3, 2, "adamw"), (5, 4, "ivon")])
def test_resume_is_bit_identical(scenes, tmp_path, monkeypatch, crash_at, ckpt_step, optimizer):
    """Crash after a checkpoint, rerun with the same partial_dir: same weights as no crash
    (IVON: its hess, momentum and bias-correction step count are restored too)."""
    p, tr, val = scenes
    tasks = get_tasks(["depth", "normals"])
    cfg = p.finetune  # head 2 + full 4 steps, checkpoints after steps 2 and 4
    assert (cfg.head_steps, cfg.steps, cfg.ckpt_every) == (2, 4, 2)
    kw = {"ivon": ivon_settings(p)} if optimizer == "ivon" else {}
    ref_model, ref = _run(p, tasks, tr, val, partial_dir=tmp_path / "ref", **kw)

    real = train.step_generator
    calls: list[int] = []

    def crashing(seed, step):
        calls.append(step)
        if step == crash_at:
            raise KeyboardInterrupt("simulated kill")
        return real(seed, step)

    partial = tmp_path / "partial"
    monkeypatch.setattr(train, "step_generator", crashing)
    with pytest.raises(KeyboardInterrupt):
        _run(p, tasks, tr, val, partial_dir=partial, **kw)
    assert (partial / "ckpt.json").is_file()
    assert train.cache.load_json(partial / "ckpt.json")["step"] == ckpt_step

    calls.clear()
    monkeypatch.setattr(train, "step_generator", lambda seed, step: calls.append(step)
                        or real(seed, step))
    model, res = _run(p, tasks, tr, val, partial_dir=partial, **kw)
    assert calls == list(range(ckpt_step, cfg.head_steps + cfg.steps))  # really resumed

    got, want = model.state_dict(), ref_model.state_dict()
    assert set(got) == set(want)
    for k in want:
        assert torch.equal(got[k], want[k]), k
    assert res.history == ref.history
    assert res.samples == ref.samples and res.steps == ref.steps


# ------------------------------------------------------------------------------- IVON / curvature


def test_ivon_learns_a_hessian_and_its_noise_is_seeded_not_global(scenes):
    """IVON's hess leaves hess_init (beta2 0.99), the run is a function of its seed, and the
    noise draws do not consume the caller's global RNG."""
    p, tr, val = scenes
    tasks = get_tasks(["depth"])
    torch.manual_seed(123)
    _run(p, tasks, tr, val)
    after_adamw = torch.rand(1)
    torch.manual_seed(123)
    m1, r1 = _run(p, tasks, tr, val, ivon=ivon_settings(p))
    assert torch.equal(torch.rand(1), after_adamw)  # the noise draws leave the global RNG as is
    m2, r2 = _run(p, tasks, tr, val, ivon=ivon_settings(p))
    for k, v in m1.state_dict().items():
        assert torch.equal(v, m2.state_dict()[k]), k
    hess = train.curvature(m1, r1.optimizer, "encoder.vit.")
    trainable = {n[len("encoder.vit."):] for n, q in m1.named_parameters()
                 if n.startswith("encoder.vit.") and q.requires_grad}
    assert set(hess) == trainable and "norm.weight" not in hess  # frozen final norm: none
    flat = torch.cat([h.flatten() for h in hess.values()])
    assert (flat > 0).all() and not torch.allclose(flat, torch.full_like(flat, p.finetune.ivon_hess_init))


def test_adamw_curvature_is_its_second_moment(depth_run):
    model, res = depth_run
    curv = train.curvature(model, res.optimizer, "encoder.vit.")
    w = model.encoder.vit.blocks[0].attn.qkv.weight
    assert torch.equal(curv["blocks.0.attn.qkv.weight"], res.optimizer.state[w]["exp_avg_sq"])


@pytest.mark.parametrize("optimizer", ["adamw", "ivon"])
def test_zero_weight_head_keeps_its_head_phase_weights(scenes, optimizer):
    """At the end of an alpha grid a task has weight 0: its head trains in the head phase only."""
    p, tr, val = scenes
    tasks = get_tasks(["depth", "normals"])
    kw = {"ivon": ivon_settings(p)} if optimizer == "ivon" else {}
    head_only = dataclasses.replace(p.finetune, steps=0)
    m0, _ = _run(p, tasks, tr, val, cfg=head_only, weights={"depth": 1.0, "normals": 0.0})
    m1, _ = _run(p, tasks, tr, val, weights={"depth": 1.0, "normals": 0.0}, **kw)
    for k, v in m0.heads["normals"].state_dict().items():
        assert torch.equal(v, m1.heads["normals"].state_dict()[k]), k
    assert not torch.equal(m0.heads["depth"].proj.weight, m1.heads["depth"].proj.weight)


def test_ivon_settings_are_checked():
    with pytest.raises(TrainingError, match="IVON settings lack head_lr, ess"):
        train.ivon_optimizer({"lr": 1.0})


def test_no_checkpoint_at_the_end(scenes, tmp_path):
    p, tr, val = scenes
    cfg = dataclasses.replace(p.finetune, ckpt_every=3)  # total 6: checkpoint after 3 only
    _run(p, get_tasks(["depth"]), tr, val, cfg=cfg, partial_dir=tmp_path)
    assert train.cache.load_json(tmp_path / "ckpt.json")["step"] == 3


# ------------------------------------------------------------------------------- pretrain / eval


def test_pretrain_simmim_runs_and_records_val_loss(smoke):
    enc = build_encoder(smoke.model, 32, seed=0)
    before = {k: v.clone() for k, v in enc.vit.state_dict().items()}
    images = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    cfg = PretrainConfig(steps=5, batch_size=8, warmup=1)
    res = pretrain(enc.vit, images, cfg, seed=0, progress=False)
    assert res.steps == 5 and len(res.history) == 5
    assert [h["step"] for h in res.history] == [1, 2, 3, 4, 5]
    for h in res.history:
        assert h["phase"] == "pretrain" and math.isfinite(h["val_loss"]) and h["val_loss"] > 0
        assert math.isfinite(h["train_loss"])
    after = enc.vit.state_dict()
    assert set(after) == set(before)  # only the ViT's own weights, no mask token or decoder
    assert not torch.equal(after["blocks.0.attn.qkv.weight"], before["blocks.0.attn.qkv.weight"])
    assert all(not q.requires_grad for q in enc.vit.norm.parameters())  # still frozen for heads


def test_evaluate_reports_every_metric_of_every_task(scenes):
    p, _tr, val = scenes
    tasks = get_tasks(["segmentation", "depth", "normals", "edges", "keypoints", "autoencoder"])
    model = build_model(p, tasks, seed=0)
    a = evaluate(model, tasks, val, batch_size=3)
    b = evaluate(model, tasks, val, batch_size=8)  # batching does not change dataset metrics
    assert set(a) == {t.name for t in tasks}
    for t in tasks:
        assert set(a[t.name]) == set(t.metric_names)
        for m, v in a[t.name].items():
            assert isinstance(v, float) and math.isfinite(v), (t.name, m, v)
            assert v == pytest.approx(b[t.name][m], rel=1e-4, abs=1e-6)
    only = evaluate(model, tasks[1:2], val)
    assert list(only) == ["depth"]


def test_uncertainty_weighting_is_kendalls_loss_and_learns_to_downweight_noisy_tasks():
    from simo.train import UncertaintyWeights

    uw = UncertaintyWeights(["a", "b"])
    with torch.no_grad():
        uw.log_var.copy_(torch.tensor([0.0, math.log(4.0)]))
    la, lb = torch.tensor(2.0), torch.tensor(8.0)
    expected = (2.0 + 0.0) / 2 + (8.0 / 4.0 + math.log(4.0)) / 2
    assert uw({"a": la, "b": lb}).item() == pytest.approx(expected)
    assert uw.weights() == pytest.approx({"a": 0.5, "b": 0.125})
    # minimising over s_t gives s_t = log ℓ_t: the larger loss ends up with the smaller weight
    uw = UncertaintyWeights(["a", "b"])
    opt = torch.optim.SGD(uw.parameters(), lr=0.1)
    for _ in range(500):
        opt.zero_grad()
        uw({"a": la, "b": lb}).backward()
        opt.step()
    assert uw.log_var.tolist() == pytest.approx([math.log(2.0), math.log(8.0)], abs=1e-3)


def test_loss_weights_are_checked():
    from simo.train import check_weights

    tasks = get_tasks(["segmentation", "depth"])
    assert check_weights(tasks, None) == {"segmentation": 1.0, "depth": 1.0}
    assert check_weights(tasks, {"depth": 2}) == {"segmentation": 0.0, "depth": 2.0}
    for bad, msg in [({"edges": 1.0}, "not a task of this run"), ({"depth": -1.0}, "finite and >= 0"),
                     ({"depth": float("nan")}, "finite and >= 0"), ({"depth": 0.0}, "every loss weight is 0")]:
        with pytest.raises(TrainingError, match=msg):
            check_weights(tasks, bad)
