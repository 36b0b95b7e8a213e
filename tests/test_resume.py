"""Runs are reproducible: killed with SIGKILL mid-training, a rerun resumes to exactly what an
uninterrupted run gives; two cold runs of the same profile and seed write the same results."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from simo import paths, runner

NB = "01_pretrain_and_finetune"
# long enough to be caught mid-run, with a resumable checkpoint every 10 steps
OVERRIDES = {"finetune.steps": 120, "finetune.ckpt_every": 10, "finetune.eval_every": 40}
ARGS = [sys.executable, "-m", "simo", "figures", "--profile", "smoke", "--only", "01",
        *[a for k, v in OVERRIDES.items() for a in ("-o", k, str(v))]]


def _run(cache, **kw):
    env = {**os.environ, "SIMO_CACHE": str(cache)}
    return subprocess.Popen(ARGS, env=env, cwd=paths.ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True, **kw)


def _results() -> dict:
    # non-default parameters: the run writes under build/runs/<id>/
    _, where = runner.destination(NB, "smoke", {"profile": "smoke", "overrides": OVERRIDES})
    assert "runs" in where.parts
    res = json.loads((where / "results.json").read_text())
    res.pop("meta")  # provenance (commit, versions) is the same; timestamps are not the point
    return res


def test_sigkill_mid_training_then_rerun_gives_the_uninterrupted_results(tmp_path):
    assert _run(tmp_path / "clean").wait(timeout=600) == 0
    clean = _results()

    cache = tmp_path / "killed"
    proc = _run(cache)
    deadline = time.time() + 300
    ckpts = []
    while time.time() < deadline and proc.poll() is None and not ckpts:
        ckpts = list(cache.glob("finetuned/*.partial/ckpt.json"))
        time.sleep(0.2)
    assert ckpts, "the run ended before any finetuning checkpoint was written"
    os.killpg(proc.pid, signal.SIGKILL)  # the runner and its notebook kernel, mid-training
    proc.wait()
    left = list(cache.glob("finetuned/*.tmp-*")) + list(cache.glob("finetuned/*.partial"))
    assert left, "a kill mid-training leaves its partial state behind"

    assert _run(cache).wait(timeout=600) == 0
    assert _results() == clean
    assert not list(cache.glob("finetuned/*.partial")) + list(cache.glob("finetuned/*.tmp-*")), \
        "the rerun leaves neither checkpoints nor half-written entries behind"


def test_same_profile_and_seed_twice_gives_identical_results(tmp_path):
    """Determinism: two cold runs (separate caches) of a notebook write the same results.json."""
    out = []
    for name in ("a", "b"):
        env = {**os.environ, "SIMO_CACHE": str(tmp_path / name)}
        subprocess.run([sys.executable, "-m", "simo", "figures", "--profile", "smoke", "--only",
                        "00"], env=env, cwd=paths.ROOT, check=True, capture_output=True)
        out.append((paths.figures_dir("smoke", "00_data_and_tasks") / "results.json").read_text())
    assert out[0] == out[1]
