"""Bad input through every public entry point ends in one line that says what to fix.

Each case goes through what a user touches (profile loading and notebook parameters, the CLI,
``merge``, loaders, checkpoints, training) and asserts the message text; the cache is snapshotted
before and after, and must be as it was (nothing half-written, nothing removed).
"""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from simo import cache, merging, paths, previews, runner
from simo.config import load_profile, resolve
from simo.data import make_dataset
from simo.errors import SimoError
from simo.tasks import get_tasks
from simo.train import Phase, check_weights, run_phases
from tests.conftest import tiny_profile


def _snapshot(root):
    return sorted((str(p.relative_to(root)), p.stat().st_size) for p in root.rglob("*")
                  if p.is_file()) if root.exists() else []


@pytest.fixture
def untouched_cache(tmp_path, monkeypatch):
    """A cache holding one finished artifact; the test must leave it exactly as it was."""
    root = tmp_path / "cache"
    monkeypatch.setenv("SIMO_CACHE", str(root))
    cache.memo("probe", {"x": 1}, lambda: {"ok": True})
    before = _snapshot(root)
    yield root
    assert _snapshot(root) == before, "a bad input changed the cache"


def _one_line(exc: BaseException) -> str:
    msg = str(exc)
    assert isinstance(exc, SimoError), f"{type(exc).__name__}: {msg}"
    assert msg and "\n" not in msg, f"not one line: {msg!r}"
    return msg


def _sd(**shapes):
    return {k: torch.ones(s) for k, s in shapes.items()}


def _nyuv2_root(tmp_path):
    """A DATA_ROOT whose nyuv2/train holds a field of files that are not .npy arrays."""
    root = tmp_path / "data"
    for field in ("image", "label", "depth", "normal"):
        (root / "nyuv2" / "train" / field).mkdir(parents=True)
        (root / "nyuv2" / "train" / field / "0.npy").write_bytes(b"not an array")
    return root


def _bad_checkpoint(tmp_path, how):
    path = tmp_path / "ckpt.safetensors"
    cache.save_tensors(path, {"w": torch.arange(64, dtype=torch.float32)})
    data = bytearray(path.read_bytes())
    if how == "truncated":
        data = data[: len(data) // 2]
    elif how == "header":
        data[10:20] = b"\xff" * 10
    elif how == "bit-flipped":
        data[-3] ^= 0x10  # one bit of the last tensor's data
    path.write_bytes(bytes(data))
    return path


def _mismatched_weights(tmp_path):
    from simo.models.encoder import build_encoder, load_encoder_weights

    p = tiny_profile()
    enc = build_encoder(p.model, p.data.image_size)
    wide = build_encoder(tiny_profile(**{"model.embed_dim": 64}).model, p.data.image_size)
    path = tmp_path / "weights.safetensors"
    cache.save_tensors(path, wide.vit.state_dict())
    load_encoder_weights(enc, path)


def _nan_training():
    task = get_tasks(["depth"])[0]
    net = torch.nn.Conv2d(3, 1, 1)
    image = torch.randn(8, 3, 4, 4)
    image[:, :, 0, 0] = float("nan")  # a corrupt pixel in every image
    data = {"image": image, "depth": torch.ones(8, 1, 4, 4)}
    phase = Phase("full", 3, [{"params": list(net.parameters()), "lr": 1e-3}],
                  lambda b, _g: (task.loss(net(b["image"]), b["depth"]), {}))
    run_phases(net, [phase], data, batch_size=4, seed=0, flip=False, progress=False, desc="probe")


CASES = {
    # profiles and notebook parameters
    "unknown profile": (lambda _p: load_profile("huge"), "unknown profile 'huge'; choose one of:"),
    "unknown task": (lambda _p: resolve("smoke", tasks="depht"), "unknown task 'depht'; choose one of:"),
    "repeated task": (lambda _p: resolve("smoke", tasks="depth,depth"), "without repeats"),
    "seed of wrong type": (lambda _p: resolve("smoke", seed="zero"), "seed must be an integer, got 'zero'"),
    "seeds not integers": (lambda _p: resolve("smoke", seeds="a,b"), "seeds must be integers"),
    "unknown override key": (lambda _p: resolve("smoke", overrides={"finetune.stepz": 3}),
                             "unknown key in finetune 'stepz'; choose one of: head_steps"),
    "override of wrong type": (lambda _p: resolve("smoke", overrides={"finetune.steps": "many"}),
                               "finetune.steps must be int, got 'many'"),
    "negative step count": (lambda _p: resolve("smoke", overrides={"finetune.steps": -5}),
                            "finetune.steps must be >= 0, got -5"),
    "unknown notebook parameter": (lambda _p: runner.check_parameters("02_misalignment", {"lamda": 1}),
                                   "unknown parameter 'lamda' for notebook 02_misalignment; valid:"),
    "unknown notebook": (lambda _p: runner.select(["07"]), "unknown notebook '07'; choose one of:"),
    "dataset the profile is not made for": (
        lambda _p: resolve("gpu-nyuv2", dataset="cityscapes"),
        "profile 'gpu-nyuv2' is made for nyuv2, not 'cityscapes': pass dataset='nyuv2'"),
    # merging
    "unknown merge method": (lambda _p: merging.merge("tiez", _sd(w=2), [_sd(w=2)]),
                             "unknown method 'tiez'; choose one of:"),
    "negative λ": (lambda _p: merging.merge("task_arithmetic", _sd(w=2), [_sd(w=2)], lam=-0.5),
                   "lam=-0.5 is out of range"),
    "TIES top-k above 100 %": (lambda _p: merging.merge("ties", _sd(w=2), [_sd(w=2)], k=150),
                               "k=150 is out of range"),
    "no finetuned models": (lambda _p: merging.merge("task_arithmetic", _sd(w=2), [], lam=1.0),
                            "finetuned"),
    "mismatched shapes": (lambda _p: merging.merge("task_arithmetic", _sd(w=2), [_sd(w=3)], lam=1.0),
                          "'w'"),
    "mismatched key sets": (lambda _p: merging.merge("task_arithmetic", _sd(w=2), [_sd(v=2)], lam=1.0),
                            "'w'"),
    # loss weights (the α of weighted multi-task finetuning)
    "negative loss weight": (lambda _p: check_weights(get_tasks(["depth", "normals"]),
                                                      {"depth": -0.5, "normals": 1.5}),
                             "loss weight of 'depth' is -0.5"),
    "all loss weights zero": (lambda _p: check_weights(get_tasks(["depth"]), {"depth": 0.0}),
                              "every loss weight is 0"),
    "loss weight for another task": (lambda _p: check_weights(get_tasks(["depth"]), {"edges": 1.0}),
                                     "loss weight for 'edges', which is not a task of this run"),
    # previews (notebook 05)
    "α off the simplex": (lambda _p: previews.check_alpha([0.7, 0.7], 2),
                          "must be task weights on the simplex (>= 0, summing to 1); it sums to 1.4"),
    "α of the wrong length": (lambda _p: previews.check_alpha([1.0], 2),
                              "has 1 entries but there are 2 tasks; give one weight per task"),
    "grid without an interior α": (lambda _p: resolve("smoke", overrides={"previews.n_alpha": 2}),
                                   "previews.n_alpha must be >= 3 for 2 tasks"),
    # data
    "missing data directory": (lambda p: make_dataset(
        resolve("smoke", dataset="nyuv2", data_root=str(p / "nowhere")), "train"),
        "no nyuv2/ under data_root"),
    "malformed data directory": (lambda p: make_dataset(
        resolve("smoke", dataset="nyuv2", data_root=str(_nyuv2_root(p))), "train"),
        "cannot read"),
    "empty split": (lambda _p: tiny_profile(**{"data.n_val": 0}),
                    "data.n_val must be >= 1 (an empty val split)"),
    # checkpoints
    "truncated checkpoint": (lambda p: cache.load_tensors(_bad_checkpoint(p, "truncated")),
                             "is corrupt or truncated"),
    "corrupt checkpoint header": (lambda p: cache.load_tensors(_bad_checkpoint(p, "header")),
                                  "is corrupt or truncated"),
    "bit-flipped checkpoint": (lambda p: cache.load_tensors(_bad_checkpoint(p, "bit-flipped")),
                               "fails its checksum (bit-flipped or overwritten)"),
    "missing checkpoint": (lambda p: cache.load_tensors(p / "none.safetensors"), "is missing"),
    "mismatched weights": (_mismatched_weights, "has shape"),
    # training
    "NaN loss mid-training": (lambda _p: _nan_training(), "probe: loss became nan at step 0"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_that_says_what_to_fix(case, untouched_cache, tmp_path):
    fn, expected = CASES[case]
    with pytest.raises(Exception) as info:
        fn(tmp_path)
    assert expected in _one_line(info.value)


def test_there_are_at_least_twenty_cases():
    assert len(CASES) >= 20


def test_cli_unknown_profile_exits_2_with_one_line(tmp_cache):
    r = subprocess.run([sys.executable, "-m", "simo", "figures", "--profile", "huge"],
                       capture_output=True, text=True, cwd=paths.ROOT)
    assert r.returncode == 2
    assert r.stderr.strip().startswith("error: unknown profile 'huge'; choose one of:")
    assert len(r.stderr.strip().splitlines()) == 1
