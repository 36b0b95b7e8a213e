"""Independent jobs (seeds, tasks, λ values) run side by side; their results meet in the cache.

A job is a picklable call, ``job(fn, *args, **kwargs)``, of a function whose result is cached
(``steps.finetuned``, ``MergeSetup.realign`` ...). :func:`prefetch` computes a list of them with
the profile's ``jobs`` executor, so that the notebook's own calls afterwards are cache hits: the
notebook reads as a plain loop and the parallelism stays out of its way.

Executors (``jobs.executor``), one code path for all:

- ``local``: ``jobs.workers`` processes on this machine (``1``: nothing is prefetched, every call
  runs in the notebook's process when it is made). On 2 cores two one-thread workers get 1.2-1.4× the
  throughput of one two-thread process (whole finetunes / bare ViT steps): small steps do not use
  two threads well.
- ``submitit-local``: submitit's local executor (a process per job); tests use it to check that it
  gives what ``local`` gives.
- ``slurm``: submitit on a SLURM cluster (``jobs.slurm_partition``, ``slurm_gpus``,
  ``slurm_time_min``); the cache directory must be on a filesystem the nodes share.

A job that fails stops the batch with its own (one-line) error; jobs already finished stay cached,
and a killed batch leaves only ``.tmp`` directories that the cache ignores and cleans.
"""
from __future__ import annotations

import atexit
import functools
import os
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any, Callable, Sequence

from simo.progress import tqdm

from simo.config import EXECUTORS
from simo.errors import ConfigError, one_of

Job = functools.partial


def job(fn: Callable, *args: Any, **kwargs: Any) -> Job:
    """One independent unit of work: ``fn(*args, **kwargs)``, with ``fn`` importable by name."""
    return functools.partial(fn, *args, **kwargs)


def threads_per_job(profile) -> int:
    j = profile.jobs
    return j.threads or max(1, profile.num_threads // max(1, j.workers))


def _run(call: Job, threads: int, env: dict[str, str]) -> None:
    """Worker side: limit torch's threads, point at the caller's cache, run the call (its result
    lands in the cache; nothing is sent back)."""
    os.environ.update(env)
    import torch

    torch.set_num_threads(threads)
    call()


def _init_worker(env: dict[str, str]) -> None:
    """Workers leave Ctrl-C (and the kernel's shutdown SIGINT) to the parent, which kills them."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.update(env)


_POOLS: dict[tuple[int, int], ProcessPoolExecutor] = {}


def _pool(workers: int, threads: int) -> ProcessPoolExecutor:
    """One pool per (workers, threads), kept for the life of the process (spawned: fork after
    torch has started its thread pool can hang)."""
    import multiprocessing as mp

    key = (workers, threads)
    if key not in _POOLS:
        env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        _POOLS[key] = ProcessPoolExecutor(workers, mp.get_context("spawn"),
                                          initializer=_init_worker, initargs=(env,))
    return _POOLS[key]


@atexit.register
def _close_pools() -> None:
    """Stop every worker now, mid-job if need be: an unfinished job leaves only a ``.tmp``
    directory, which the cache never reads."""
    for p in _POOLS.values():
        for proc in list(getattr(p, "_processes", {}).values()):
            proc.terminate()
        p.shutdown(wait=False, cancel_futures=True)
    _POOLS.clear()


def _submitit_executor(profile, folder):
    import submitit

    j = profile.jobs
    if j.executor == "submitit-local":
        ex = submitit.LocalExecutor(folder=str(folder))
        ex.update_parameters(timeout_min=j.slurm_time_min)
    else:
        ex = submitit.AutoExecutor(folder=str(folder), cluster="slurm")
        ex.update_parameters(timeout_min=j.slurm_time_min, slurm_partition=j.slurm_partition,
                             gpus_per_node=j.slurm_gpus, cpus_per_task=threads_per_job(profile))
    return ex


class _SubmititFuture:
    """A submitit job seen as a ``concurrent.futures`` future (done / result)."""

    def __init__(self, sjob):
        self.job = sjob

    def done(self) -> bool:
        return self.job.done()

    def result(self):
        return self.job.result()

    def cancel(self) -> None:
        self.job.cancel(check=False)


def prefetch(profile, calls: Sequence[Job], desc: str = "jobs") -> float:
    """Compute ``calls`` with the profile's executor so that calling them afterwards hits the cache.

    At most ``jobs.workers`` run at once, in the order given (put what others wait for first).
    With ``local`` and one worker it does nothing. Returns the wall seconds it took.
    """
    from simo import paths

    j = profile.jobs
    if j.executor not in EXECUTORS:
        raise ConfigError(one_of(j.executor, EXECUTORS, "jobs.executor"))
    if not calls or (j.executor == "local" and j.workers <= 1):
        return 0.0
    t0 = time.perf_counter()
    threads = threads_per_job(profile)
    env = {"SIMO_CACHE": str(paths.cache_root()), "OMP_NUM_THREADS": str(threads)}
    if j.executor == "local":
        pool = _pool(j.workers, threads)
        submit: Callable[[Job], Any] = lambda c: pool.submit(_run, c, threads, env)  # noqa: E731
    else:
        ex = _submitit_executor(profile, paths.cache_root() / "submitit")
        submit = lambda c: _SubmititFuture(ex.submit(_run, c, threads, env))  # noqa: E731
    todo = list(calls)
    running: list[Any] = []
    bar = tqdm(total=len(todo), desc=desc, leave=False)
    try:
        while todo or running:
            while todo and len(running) < j.workers:
                running.append(submit(todo.pop(0)))
            finished = _wait_any(running)
            for f in finished:
                running.remove(f)
                f.result()  # re-raises the job's own error
                bar.update(1)
    except BaseException:
        for f in running:
            f.cancel()
        if j.executor == "local":
            _close_pools()  # interrupted or failed: do not leave workers running behind
        raise
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    print(f"{desc}: {len(calls)} jobs, {j.workers} at a time ({j.executor}, {threads} thread"
          f"{'s' if threads > 1 else ''} each): {seconds:.0f} s")
    return seconds


def _wait_any(running: list) -> list:
    futures = [f for f in running if isinstance(f, Future)]
    if len(futures) == len(running):
        return list(wait(futures, return_when=FIRST_COMPLETED).done)
    while True:  # submitit jobs: poll
        done = [f for f in running if f.done()]
        if done:
            return done
        time.sleep(0.5)
