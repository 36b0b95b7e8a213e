"""A cached step killed with SIGKILL mid-training leaves nothing half-written under its key, and a
rerun resumes from its last checkpoint to exactly what an uninterrupted run gives.

The step runs directly (``steps.finetuned`` on the tiny smoke profile), in a subprocess that
stops at a known optimizer step after a checkpoint, so the kill lands mid-training every time.
(Determinism of a whole notebook from an empty cache is checked in ``test_notebooks.py``.)
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from simo import cache, paths, steps, train
from tests.conftest import tiny_profile

TASK = "depth"
PAUSE_AT = 5  # TINY: head 2 + full 4 optimizer steps, checkpoints after steps 2 and 4
CHECKPOINT = 4

# The child finishes pretraining, then finetunes and blocks at step PAUSE_AT (a checkpoint at
# step CHECKPOINT is on disk by then) until the test kills it. One thread, like the test process,
# so both compute the same bits.
CHILD = f"""
import sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)
from simo import steps, train
from tests.conftest import tiny_profile
p = tiny_profile()
steps.pretrained(p, progress=False)
real = train.step_generator
def paused(seed, step):
    if step == {PAUSE_AT}:
        Path(sys.argv[1]).touch()
        time.sleep(600)
    return real(seed, step)
train.step_generator = paused
steps.finetuned(p, {TASK!r}, seed=0, progress=False)
"""


def _killed_mid_training(cache_root, flag):
    """Start the child on ``cache_root``, wait until it is blocked mid-training, SIGKILL it."""
    env = {**os.environ, "SIMO_CACHE": str(cache_root)}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(flag)], env=env, cwd=paths.ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not flag.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    if not flag.exists():
        proc.kill()
        pytest.fail(f"the child never reached step {PAUSE_AT}: {proc.communicate()[1][-2000:]!r}")
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL


def test_sigkill_mid_training_then_rerun_gives_the_uninterrupted_result(tmp_path, monkeypatch):
    p = tiny_profile()
    monkeypatch.setenv("SIMO_CACHE", str(tmp_path / "clean"))
    clean = steps.finetuned(p, TASK, seed=0, progress=False)

    killed = tmp_path / "killed"
    _killed_mid_training(killed, tmp_path / "paused")
    root = killed / "finetuned"
    assert not (root / clean.key).exists(), "a killed run left an entry under the final key"
    assert cache.load_json(root / f"{clean.key}.partial" / "ckpt.json")["step"] == CHECKPOINT
    assert list(root.glob(f"{clean.key}.tmp-*")), "the killed writer worked in its scratch dir"
    assert (killed / "pretrained").is_dir()  # the step before it finished and stays

    real, calls = train.step_generator, []
    monkeypatch.setattr(train, "step_generator",
                        lambda seed, step: calls.append(step) or real(seed, step))
    monkeypatch.setenv("SIMO_CACHE", str(killed))
    resumed = steps.finetuned(p, TASK, seed=0, progress=False)
    total = p.finetune.head_steps + p.finetune.steps
    # every optimizer step draws one generator (pretraining too): only the steps after the
    # checkpoint ran, so the rerun resumed and reused the finished pretrained encoder
    assert calls == list(range(CHECKPOINT, total)), "the rerun did not resume from the checkpoint"

    assert resumed.key == clean.key
    got, want = resumed.tensors(), clean.tensors()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert {k: v for k, v in resumed.meta.items() if k != "seconds"} == \
        {k: v for k, v in clean.meta.items() if k != "seconds"}
    assert sorted(e.name for e in root.iterdir() if not e.name.startswith(".")) == [clean.key], \
        "the rerun leaves neither a checkpoint nor a half-written entry behind"
