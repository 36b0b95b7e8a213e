"""The foundation encoder: its data, objectives, release, resume and the evidence helpers."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from simo import foundation, paths
from simo.config import load_profile
from simo.data.scenes import AUX_FIELDS, render_scenes
from simo.errors import CheckpointError, ConfigError
from simo.models.encoder import build_encoder, file_sha256
from simo.train import SimMIM, step_generator
from tests.conftest import tiny_profile

# the smoke profile's foundation, a little longer so that a kill lands mid-run
CLI = [sys.executable, "-m", "simo", "foundation", "--profile", "smoke",
       "-o", "foundation.steps", "40", "-o", "foundation.ckpt_every", "4"]


def test_contours_mark_both_sides_of_every_surface_change():
    inst = torch.tensor([[[0, 0, 1],
                          [0, 0, 1],
                          [2, 2, 2]]])
    want = torch.tensor([[[0, 1, 1],
                          [1, 1, 1],
                          [1, 1, 1]]], dtype=torch.uint8)
    assert torch.equal(foundation.contours(inst)[:, 0], want)


def test_aux_fields_are_consistent_with_the_image():
    a = render_scenes(4, seed=5, size=16, distribution="wide", fields=("image",) + AUX_FIELDS)
    # image = albedo x shading, clipped: the decomposition the aux objective learns is exact
    recon = np.clip(a["albedo"] * a["shading"][..., None], 0, 1)
    np.testing.assert_allclose(recon, a["image"], atol=1e-6)
    assert set(np.unique(a["texture"])) <= {0, 1, 2}
    assert a["instance"].min() >= 0  # closed rooms: every ray hits a surface


def test_wide_scenes_are_other_scenes_and_task_scenes_are_unchanged():
    task = render_scenes(3, seed=1001, size=16, distribution="task")
    again = render_scenes(3, seed=1001, size=16, distribution="task", fields=("image", "depth"))
    np.testing.assert_array_equal(task["image"], again["image"])
    wide = render_scenes(3, seed=1001, size=16, distribution="wide", fields=("image",))
    assert not np.allclose(wide["image"], task["image"])


def test_unknown_scene_field_is_a_one_line_error():
    with pytest.raises(Exception, match="unknown scene fields"):
        render_scenes(1, seed=0, size=16, fields=("image", "albedoo"))


@pytest.mark.parametrize("objective", ["simmim", "aux"])
def test_objectives_give_finite_losses_that_train(objective):
    p = tiny_profile()
    data = foundation.pretraining_scenes(8, 32, progress=False)
    vit = build_encoder(p.model, 32).vit
    channels = 3 if objective == "simmim" else sum(foundation.AUX_TARGETS.values())
    model = SimMIM(vit, channels)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(15):
        loss, parts = foundation.objective_loss(model, data, objective, 0.5,
                                                step_generator(0, 0))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses)) and parts
    assert losses[-1] < losses[0]


def test_bad_objective_is_a_one_line_error():
    with pytest.raises(ConfigError, match="foundation.objective"):
        tiny_profile(**{"foundation.objective": "dino"})


def _run(out, cache, **kw):
    env = {**os.environ, "SIMO_CACHE": str(cache)}
    return subprocess.Popen(CLI + ["--out", str(out)], env=env, cwd=paths.ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, **kw)


def test_make_foundation_after_sigkill_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    """Two processes, two caches: the killed-and-resumed release must equal the uninterrupted one
    byte for byte, which also shows that ``make foundation`` is deterministic across processes."""
    a, c = (tmp_path / f"{n}.safetensors" for n in "ac")
    assert _run(a, tmp_path / "cache-a").wait(timeout=300) == 0
    assert a.with_suffix(".md").is_file() and a.with_suffix(".json").is_file()
    assert file_sha256(a) in a.with_suffix(".md").read_text()

    cache = tmp_path / "cache-c"
    proc = _run(c, cache)
    deadline, ckpts = time.time() + 240, []
    while time.time() < deadline and proc.poll() is None and not ckpts:
        ckpts = list(cache.glob("foundation/*.partial/ckpt.json"))
        time.sleep(0.1)
    assert ckpts, "the run ended before any checkpoint was written"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not c.exists(), "a killed run must not leave a release behind"
    assert _run(c, cache).wait(timeout=300) == 0
    assert file_sha256(c) == file_sha256(a)
    assert not list(cache.glob("foundation/*.partial")), "the resumed run cleans its checkpoints"


@pytest.fixture
def release(tmp_path):
    """A weights file written like the release (state dict of the smoke profile's ViT)."""
    from simo import cache

    p = load_profile("smoke")
    path = tmp_path / "enc.safetensors"
    cache.save_tensors(path, build_encoder(p.model, p.data.image_size).vit.state_dict())
    return p, path


@pytest.mark.parametrize("damage", ["missing", "truncated", "other"])
def test_damaged_weights_are_one_line_errors_naming_file_and_fix(release, damage, tmp_cache):
    from simo.steps import pretrained

    p, path = release
    sha = file_sha256(path)
    if damage == "missing":
        path.unlink()
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:-100])
    else:
        path.write_bytes(path.read_bytes() + b" ")
    profile = load_profile("smoke", {"model.weights": str(path), "model.weights_sha256": sha})
    with pytest.raises(CheckpointError) as e:
        pretrained(profile)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg
    assert "does not exist" in msg if damage == "missing" else "weights_sha256" in msg
    assert not (tmp_cache / "weights").exists(), "nothing is cached from a bad file"


def test_a_damaged_release_is_refused_even_when_the_cache_is_warm(release, tmp_cache):
    from simo.steps import pretrained

    p, path = release
    profile = load_profile("smoke", {"model.weights": str(path),
                                     "model.weights_sha256": file_sha256(path)})
    art = pretrained(profile)
    assert torch.equal(art.tensors()["pos_embed"],
                       build_encoder(p.model, p.data.image_size).vit.state_dict()["pos_embed"])
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(CheckpointError, match="does not match"):
        pretrained(profile)


def test_the_release_names_make_foundation_as_its_fix(monkeypatch, tmp_path):
    monkeypatch.setattr(paths, "WEIGHTS", tmp_path)
    with pytest.raises(CheckpointError, match="make foundation"):
        foundation_path = tmp_path / "foundation-tiny.safetensors"
        from simo.models.encoder import check_weights_file

        check_weights_file(foundation_path)


def test_tiny_pins_the_released_weights_and_they_match():
    p = load_profile("tiny")
    path = paths.repo_file(p.model.weights)
    assert path.parent == paths.WEIGHTS and p.model.weights_sha256
    assert file_sha256(path) == p.model.weights_sha256
    assert path.stat().st_size <= 20 * 2 ** 20
    card = path.with_suffix(".md").read_text()
    assert p.model.weights_sha256 in card


def test_a_model_built_from_scratch_ignores_the_profiles_weights(release):
    """Scratch runs of a profile with released weights start from random weights, not the file."""
    from simo.models import build_model

    p, path = release
    with_file = load_profile("smoke", {"model.weights": str(path)})
    a = build_model(with_file, [], seed=3).encoder.vit.state_dict()
    b = build_model(p, [], seed=3).encoder.vit.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the file holds seed-0 weights: loading it (as build_encoder does) gives other tensors
    loaded = build_encoder(with_file.model, 32, seed=3).vit.state_dict()
    assert not torch.equal(a["blocks.0.attn.qkv.weight"], loaded["blocks.0.attn.qkv.weight"])
