"""Independent jobs: a process pool and submitit's local executor fill the cache like in-process
calls do, pass a job's own error through, and pickle a merge setup as its recipe."""
from __future__ import annotations

import pickle

import pytest
import torch

from simo import cache, jobs, merged, steps
from simo.config import load_profile
from simo.errors import ConfigError, TaskError
from tests.conftest import tiny_profile

ONE_THREAD = {"jobs.threads": 1}


def _finetune_jobs(p):
    return [jobs.job(steps.finetuned, p, t, seed=0, progress=False) for t in ("depth", "normals")]


def test_one_local_worker_prefetches_nothing(tmp_cache):
    p = tiny_profile()
    assert p.jobs.workers == 1
    assert jobs.prefetch(p, _finetune_jobs(p)) == 0.0
    assert not (tmp_cache / "finetuned").exists()


def test_pool_fills_the_cache_and_later_calls_hit_it(tmp_cache, capsys):
    p = tiny_profile(**{"jobs.workers": 2}, **ONE_THREAD)
    jobs.prefetch(p, _finetune_jobs(p), desc="two finetunes")
    assert "two finetunes: 2 jobs, 2 at a time (local, 1 thread each)" in capsys.readouterr().out
    assert len(list((tmp_cache / "finetuned").iterdir())) >= 2
    before = dict(cache.STATS)
    art = steps.finetuned(p, "depth", seed=0)
    assert cache.STATS["misses"] == before["misses"] and cache.STATS["hits"] > before["hits"]
    assert art.meta["steps"] == p.finetune.head_steps + p.finetune.steps


def _finetuned_tensors(p, task):
    return steps.finetuned(p, task, seed=0).tensors()


def test_submitit_local_gives_what_the_local_pool_gives(tmp_path, monkeypatch):
    out = {}
    for executor in ("local", "submitit-local"):
        monkeypatch.setenv("SIMO_CACHE", str(tmp_path / executor))
        p = tiny_profile(**{"jobs.workers": 2, "jobs.executor": executor}, **ONE_THREAD)
        jobs.prefetch(p, _finetune_jobs(p)[:1])
        before = cache.STATS["misses"]
        out[executor] = (_finetuned_tensors(p, "depth"),
                         steps.finetuned(p, "depth", seed=0).meta["test"])
        assert cache.STATS["misses"] == before, f"{executor} left the job uncomputed"
    (ta, ma), (tb, mb) = out["local"], out["submitit-local"]
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
    assert ma == mb


def test_a_failing_job_raises_its_own_error_in_the_caller(tmp_cache):
    p = tiny_profile(**{"jobs.workers": 2}, **ONE_THREAD)
    with pytest.raises(TaskError, match="unknown task 'depht'"):
        jobs.prefetch(p, [jobs.job(steps.finetuned, p, "depht", seed=0, progress=False)])


def test_merge_setup_pickles_as_its_recipe(cache_dir):
    p = tiny_profile()
    setup = merged.merge_setup(p, seed=0)
    blob = pickle.dumps(setup)
    assert len(blob) < 10_000  # the profile, not the tensors
    again = pickle.loads(blob)
    assert again.names == setup.names and again.sources == setup.sources
    assert all(torch.equal(again.pretrained[k], v) for k, v in setup.pretrained.items())


@pytest.mark.parametrize("key,value,message", [
    ("jobs.executor", "dask", "unknown jobs.executor 'dask'; choose one of: local, submitit-local"),
    ("jobs.workers", 0, "jobs.workers must be >= 1, got 0"),
])
def test_bad_jobs_settings_fail_in_one_line(key, value, message):
    with pytest.raises(ConfigError, match=message):
        load_profile("smoke", {key: value})
