"""Merged models of a profile: :class:`MergeSetup` gathers θ0, the finetuned encoders and their
heads once, merges them with any registered method, and scores or realigns the result, each
evaluation cached (:func:`simo.cache.memo`).

Everything a method needs comes from the merging registry (:func:`simo.merging.register`): its
profile settings, and whether it takes the seed, Fisher information or a task index. So this
module names no method, and ``single_task`` (the reference) is a method like the others.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
from pathlib import Path
from typing import Iterator

import torch

from simo import cache, realign
from simo.config import Profile, setting
from simo.data import make_dataset, subset
from simo.errors import MergeError, TaskError, one_of
from simo.merging import METHODS, fisher_diagonal, merge, method_params
from simo.steps import heads_of, load_finetuned, pretrained, single_task_models, tasks_of
from simo.tasks import Task, delta_mtl
from simo.train import evaluate, sample_batch, step_generator, to_device

SWEEP_HEADS = ("original", "pretrained")  # heads that read a task-vector sweep (MergeSetup.sweep)


def encoders_for(method: str, pretrained_sd: dict, finetuned_sds: list[dict], task_names: list[str],
                 **params) -> dict[str, dict[str, torch.Tensor]]:
    """The encoder each task is evaluated with after merging: one shared encoder, or each task's
    own for a method that ``needs`` the ``task`` (TALL masks, the single-task reference)."""
    if "task" in METHODS[method].needs:
        return {t: merge(method, pretrained_sd, finetuned_sds, task=i, **params)
                for i, t in enumerate(task_names)}
    shared = merge(method, pretrained_sd, finetuned_sds, **params)
    return {t: shared for t in task_names}


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread inside: a reduction's order, and so its last bits, depend on the
    thread count, and a cached result must not depend on the machine that computed it."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def fisher_of(profile: Profile, art: cache.Artifact, task: str, seed: int = 0,
              batches: int | None = None) -> dict:
    """Diagonal (empirical) Fisher of a single-task model's encoder on its own task's loss, over
    ``batches`` minibatches of the train split (default ``merging.fisher_batches``)."""
    model = load_finetuned(profile, art)
    t = tasks_of(profile, [task])[0]
    train = make_dataset(profile, "train")
    device = next(model.parameters()).device
    batches = [to_device(sample_batch(train, profile.finetune.batch_size,
                                      step_generator(seed, i), False)[0], device)
               for i in range(batches or profile.merging.fisher_batches)]
    with one_thread():  # sums of squares in a fixed order: the same bits on any core count
        f = fisher_diagonal(model.encoder.vit, batches,
                            lambda _vit, b: t.loss(model(b["image"])[task], b[t.target]))
    return {k: f.get(k, torch.zeros_like(v)).cpu()  # beside the CPU state dicts it weighs
            for k, v in model.encoder.vit.state_dict().items()}


@dataclasses.dataclass
class MergeSetup:
    """Everything a merge needs, gathered once: θ0, the finetuned encoders, heads, Fishers.

    ``encoders(method, lam)`` gives each task's merged encoder with the profile's method knobs;
    ``original`` and ``realigned`` score it with the original or the realigned heads.
    """

    profile: Profile
    tasks: list[Task]
    pretrained: dict[str, torch.Tensor]
    finetuned: list[dict[str, torch.Tensor]]
    heads: dict[str, dict[str, torch.Tensor]]
    seed: int = 0
    fishers: list[dict] | None = None
    sources: list[str] = dataclasses.field(default_factory=list)  # artifact keys it was built from

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def __reduce__(self):
        """Pickle as the recipe, not the tensors: a job worker rebuilds it from the cache."""
        return _setup_from, (self.profile, self.seed, self.fishers is not None)

    def params(self, method: str, lam: float) -> dict:
        """The keywords of ``method`` at ``lam``: the profile settings it declares, and the
        seed or Fishers it needs (see :func:`simo.merging.register`)."""
        if method not in METHODS:
            raise MergeError(one_of(method, sorted(METHODS), "method"))
        fn = METHODS[method]
        p = {k: setting(self.profile, key) for k, key in fn.settings.items()}
        if "fishers" in fn.needs and self.fishers is None:
            raise MergeError(f"{method!r} needs Fisher information: "
                             f"merge_setup(profile, seed, with_fisher=True)")
        p.update({k: getattr(self, k) for k in fn.needs if k in ("seed", "fishers")})
        if "lam" in method_params(method):
            p["lam"] = lam
        return p

    def encoders(self, method: str, lam: float = 1.0) -> dict[str, dict[str, torch.Tensor]]:
        return encoders_for(method, self.pretrained, self.finetuned, self.names,
                            **self.params(method, lam))

    def data(self, split: str) -> dict:
        """``val`` (the λ-selection images), ``test``, or ``small`` (the realignment set)."""
        if split == "small":
            return subset(make_dataset(self.profile, "train"), self.profile.realign.n_samples,
                          self.seed)
        limit = self.profile.merging.n_select if split == "val" else None
        return make_dataset(self.profile, split, limit=limit)

    def _memo(self, kind: str, method: str, lam: float, split: str | None, fn,
              realign_kind: str | None = None) -> dict:
        needs = METHODS[method].needs
        params = {k: v for k, v in self.params(method, lam).items() if k != "fishers"}
        cfg = {"kind": kind, "method": method, "params": params, "split": split,
               "sources": self.sources, "seed": self.seed,
               "n_select": self.profile.merging.n_select,
               "realign": realign.config_of(self.profile, realign_kind),
               "fisher_batches": self.profile.merging.fisher_batches if "fishers" in needs
               else None}
        return cache.memo("merge_eval", cfg, fn)

    def original(self, method: str, lam: float, split: str) -> dict[str, dict[str, float]]:
        """Metrics of each task's original head on its merged encoder (cached): the merge as it
        is, before any realignment (:meth:`realigned`)."""
        return self._memo("original", method, lam, split, lambda: realign.evaluate_encoders(
            self.profile, self.tasks, self.encoders(method, lam), self.heads, self.data(split)))

    def realign(self, method: str, lam: float, kind: str = "head") -> dict:
        """Realign on the small labelled set, then score on val and test (cached).

        ``kind``: ``"head"`` (heads only, features cached) or ``"repr"`` (adapters + heads).
        Returns ``{"val": metrics, "test": metrics, "steps", "samples", "seconds"}``: one
        realignment serves both λ selection (val) and the report (test).
        """
        if kind not in realign.SETTINGS:
            raise MergeError(one_of(kind, tuple(realign.SETTINGS), "realignment kind"))

        def run() -> dict:
            enc, small = self.encoders(method, lam), self.data("small")
            if kind == "head":
                heads, cost = realign.realign_heads(self.profile, self.tasks, enc, self.heads,
                                                    small, self.seed)
                score = lambda split: realign.evaluate_encoders(  # noqa: E731
                    self.profile, self.tasks, enc, heads, self.data(split))
            else:
                if "task" in METHODS[method].needs:
                    raise MergeError(f"representation realignment needs one shared encoder; "
                                     f"{method!r} gives each task its own")
                ref, val = self.original("single_task", 1.0, "val"), self.data("val")
                model, cost = realign.realign_representation(
                    self.profile, self.tasks, enc[self.names[0]], self.heads, small, self.seed,
                    score=lambda m: delta_mtl(evaluate(m, self.tasks, val,
                                                       self.profile.eval_batch_size),
                                              ref, self.tasks))
                score = lambda split: evaluate(model, self.tasks, self.data(split),  # noqa: E731
                                               self.profile.eval_batch_size)
            return {"val": score("val"), "test": score("test"), **cost}

        return self._memo(f"realigned-{kind}", method, lam, None, run, kind)

    def realigned(self, method: str, lam: float, split: str,
                  kind: str = "head") -> dict[str, dict[str, float]]:
        """Metrics on ``split`` (val or test) after realignment (see :meth:`realign`)."""
        return self.realign(method, lam, kind)[split]

    def pretrained_heads(self) -> dict[str, dict[str, torch.Tensor]]:
        """Every task's head realigned on the frozen *pretrained* encoder θ0 (the profile's head
        realignment budget, starting from the task's own head). Cached as an artifact."""
        cfg = {"sources": self.sources, "seed": self.seed,
               "realign": realign.config_of(self.profile, "head")}

        def compute(out: Path, _partial: Path) -> None:
            heads, cost = realign.realign_heads(self.profile, self.tasks,
                                        {n: self.pretrained for n in self.names}, self.heads,
                                        self.data("small"), self.seed)
            cache.save_tensors(out / cache.TENSORS, {f"head.{t}.{k}": v for t, sd in heads.items()
                                                     for k, v in sd.items()})
            cache.save_json(out / cache.META, cost)

        return heads_of(cache.get_or_compute("pretrained_heads", cfg, compute))

    def sweep(self, source: str, lam: float, heads: str = "original") -> dict[str, dict[str, float]]:
        """Val metrics of every task on θ0 + λ·τ_source, read by each task's original head or
        (``heads="pretrained"``) by its head realigned on θ0 (:meth:`pretrained_heads`). Cached."""
        if source not in self.names:
            raise TaskError(one_of(source, self.names, "source task"))
        if heads not in SWEEP_HEADS:
            raise MergeError(one_of(heads, SWEEP_HEADS, "heads"))

        def run() -> dict:
            enc = merge("task_arithmetic", self.pretrained,
                        [self.finetuned[self.names.index(source)]], lam=lam)
            hs = self.heads if heads == "original" else self.pretrained_heads()
            return realign.evaluate_encoders(self.profile, self.tasks,
                                             {n: enc for n in self.names}, hs, self.data("val"))

        return self._memo(f"sweep-{heads}-{source}", "task_arithmetic", lam, "val", run,
                          "head" if heads == "pretrained" else None)


@functools.lru_cache(maxsize=4)
def _setup_from(profile: Profile, seed: int, with_fisher: bool) -> MergeSetup:
    return merge_setup(profile, seed, with_fisher)


def merge_setup(profile: Profile, seed: int = 0, with_fisher: bool = False) -> MergeSetup:
    """Load the pretrained encoder and every single-task model of the profile (training if needed)."""
    single = single_task_models(profile, seed)
    base = pretrained(profile)
    names = list(profile.tasks)
    setup = MergeSetup(profile, tasks_of(profile), base.tensors(),
                       [single[t].tensors("encoder.") for t in names],
                       {t: heads_of(single[t])[t] for t in names}, seed,
                       sources=[base.key] + [single[t].key for t in names])
    if with_fisher:
        setup.fishers = [fisher_of(profile, single[t], t, seed) for t in names]
    return setup
