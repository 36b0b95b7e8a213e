"""Preview grids against real runs: the cached steps of notebook 05.

From the per-task runs (:func:`simo.steps.finetuned`, AdamW or IVON) build each task's posterior
(:func:`posterior`, one registered :data:`KINDS` entry per kind), preview the merged encoder at
every α of a grid, read it with the single-task heads as they are and after a brief head
realignment (:func:`preview_grid`), and train the real weighted runs it is judged against
(:func:`weighted_run`).
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Sequence

import torch

from simo import cache
from simo.config import Profile, knob_profiles, setting, with_settings
from simo.data import make_dataset, subset
from simo.errors import PreviewError, TaskError, one_of
from simo.merged import fisher_of
from simo.previews.posterior import (Posterior, check_alpha, gaussian, isotropic, load_posterior,
                                     mixture, preview, prior_precision, save_posterior,
                                     simplex_grid)
from simo.realign import evaluate_encoders, realign_heads
from simo.realign import config_of as realign_config
from simo.steps import finetuned, heads_of, pretrained, tasks_of
from simo.tasks import Task


@dataclasses.dataclass(frozen=True)
class Kind:
    """A kind of posterior and what it is made of: the optimizer of the per-task runs it reads,
    its precision (``unit``: isotropic; ``sg``: AdamW's squared gradients; ``ivon``: IVON's
    Hessian, ess·(hess + weight decay)), and whether it mixes the runs of several seeds."""

    optimizer: str
    precision: str
    mixture: bool = False


KINDS: dict[str, Kind] = {
    "isotropic": Kind("adamw", "unit"),  # plain averaging: task arithmetic's posterior
    "adamw_sg": Kind("adamw", "sg"),
    "ivon_hess": Kind("ivon", "ivon"),
    "multi_ivon_hess": Kind("ivon", "ivon", mixture=True),  # K = previews.components seeds
}


def _kind(kind: str) -> Kind:
    if kind not in KINDS:
        raise PreviewError(one_of(kind, tuple(KINDS), "posterior kind"))
    return KINDS[kind]


def _previews_realign(profile: Profile) -> Profile:
    """``profile`` with its head realignment set to the previews' (``previews.realign_*``)."""
    pv = profile.previews
    return with_settings(profile, {"realign.n_samples": pv.realign_samples,
                                   "realign.head_steps": pv.realign_steps})


def previews_profile(profile: Profile) -> Profile:
    """The profile every previews run uses: the weighted tasks, and ``previews.steps`` full steps
    for per-task runs and weighted ground truth alike (the same budget, as the paper compares)."""
    steps = profile.previews.steps or profile.finetune.steps
    return with_settings(profile, {"tasks": profile.previews.tasks, "finetune.steps": steps,
                                   "finetune.mtl_steps": steps})


def weighted_run(profile: Profile, alpha: Sequence[float], seed: int = 0,
                 optimizer: str = "adamw", progress: bool = True) -> cache.Artifact:
    """Ground truth at ``alpha``: real finetuning on Σ_t α_t ℓ_t over ``previews.tasks``."""
    pp = previews_profile(profile)
    alpha = check_alpha(alpha, len(pp.tasks))
    return finetuned(pp, list(pp.tasks), seed=seed, weights=dict(zip(pp.tasks, alpha)),
                     optimizer=optimizer, progress=progress)


def runs(kind: str, seed: int, profile: Profile) -> list[tuple[str, int]]:
    """(optimizer, seed) of the per-task runs behind a posterior of ``kind``: the run of ``seed``,
    or for a mixture the runs of the first ``previews.components`` seeds."""
    spec = _kind(kind)
    if spec.mixture:
        return [(spec.optimizer, s) for s in profile.previews.seeds[:profile.previews.components]]
    return [(spec.optimizer, seed)]


def posterior(profile: Profile, task: str, kind: str, seed: int = 0):
    """The posterior of one task's encoder (:class:`simo.previews.Posterior`), cached as safetensors.

    ``isotropic``: the AdamW run's weights, unit precision. ``adamw_sg``: AdamW's final second
    moment (``previews.sg_estimator="adam"``) or a pass of squared minibatch gradients at the final
    weights (``"gradsq"``, ``previews.sg_batches`` batches). ``ivon_hess``: the IVON run's mean and
    precision ess·(hess + weight decay). ``multi_ivon_hess``: the IVON runs of the first
    ``previews.components`` seeds as an equal-weight mixture (``seed`` is ignored).
    """
    spec = _kind(kind)
    pp, pv = previews_profile(profile), profile.previews
    if task not in pp.tasks:
        raise TaskError(one_of(task, pp.tasks, "previews task"))
    arts = {(o, s): finetuned(pp, task, seed=s, optimizer=o) for o, s in runs(kind, seed, pp)}
    cfg = {"task": task, "kind": kind, "sources": [a.key for a in arts.values()],
           "sg": [pv.sg_estimator, pv.sg_batches] if spec.precision == "sg" else None}

    def gaussian_of(art: cache.Artifact, run_seed: int) -> Posterior:
        mean = art.tensors("encoder.")
        if spec.precision == "unit":
            return isotropic(mean)
        if spec.precision == "sg" and pv.sg_estimator == "gradsq":
            curv = fisher_of(pp, art, task, run_seed, batches=pv.sg_batches)
        else:
            curv = art.tensors("curvature.")
        ft = pp.finetune
        scale = (ft.ivon_ess, ft.ivon_weight_decay) if spec.precision == "ivon" else (1.0, 0.0)
        prec = {k: scale[0] * (curv[k] + scale[1]) if k in curv else torch.zeros_like(v)
                for k, v in mean.items()}
        return gaussian(mean, prec, kind)

    def compute(out: Path, _partial: Path) -> None:
        parts = [gaussian_of(a, s) for (_, s), a in arts.items()]
        post = mixture(parts, kind) if spec.mixture else parts[0]
        save_posterior(out / cache.TENSORS, post)
        cache.save_json(out / cache.META, {"k": len(parts)})

    art = cache.get_or_compute("posterior", cfg, compute)
    return load_posterior(art.path / cache.TENSORS)


@dataclasses.dataclass
class Previewer:
    """Previews one kind of posterior at any α: merge, read with the single-task heads as they
    are, then realign the heads briefly on the previewed encoder and read again (:func:`previewer`).
    """

    profile: Profile  # the previews profile, its head realignment set to previews.realign_*
    tasks: list[Task]
    posteriors: list
    heads: dict[str, dict[str, torch.Tensor]]
    prior_mean: dict[str, torch.Tensor]
    prior_precision: float
    realign_data: dict
    seed: int = 0

    def __call__(self, alpha: Sequence[float], data: dict, realign: bool = True) -> dict:
        """``{"original": metrics, "realigned": metrics or None, "seconds": {"merge",
        "evaluate", "realign"}}`` of the preview at ``alpha``, read on ``data``."""
        t0 = time.perf_counter()
        enc = preview(self.posteriors, alpha, self.prior_mean, self.prior_precision,
                      iters=self.profile.previews.em_iters)
        encs = {t.name: enc for t in self.tasks}
        t1 = time.perf_counter()
        out = {"original": evaluate_encoders(self.profile, self.tasks, encs, self.heads, data),
               "realigned": None}
        t2 = time.perf_counter()
        if realign:
            new, _ = realign_heads(self.profile, self.tasks, encs, self.heads, self.realign_data,
                                   self.seed)
            out["realigned"] = evaluate_encoders(self.profile, self.tasks, encs, new, data)
        t3 = time.perf_counter()
        out["seconds"] = {"merge": t1 - t0, "evaluate": t2 - t1, "realign": t3 - t2}
        return out


def previewer(profile: Profile, kind: str, seed: int = 0) -> Previewer:
    """The :class:`Previewer` of ``kind`` posteriors from the per-task runs of ``seed``. Heads come
    from the same runs (the first component's for a mixture); the prior precision is
    ``previews.prior_rel`` × the posteriors' median precision."""
    pp, pv = previews_profile(profile), profile.previews
    tasks = tasks_of(pp)
    posts = [posterior(pp, t.name, kind, seed) for t in tasks]
    o, s = runs(kind, seed, pp)[0]
    heads = {t.name: heads_of(finetuned(pp, t.name, seed=s, optimizer=o))[t.name] for t in tasks}
    return Previewer(_previews_realign(pp), tasks, posts, heads, pretrained(pp).tensors(),
                     prior_precision(posts, pv.prior_rel),
                     subset(make_dataset(pp, "train"), pv.realign_samples, seed), seed)


def preview_grid(profile: Profile, kind: str, seed: int = 0, split: str = "test") -> dict:
    """:class:`Previewer` results at every α of the grid (cached, with the summed timings).

    Returns ``{"alphas", "original": [metrics per α], "realigned": [...], "prior_precision",
    "seconds": {"merge", "evaluate", "realign"}}``; "evaluate" times the original-head reading,
    "realign" the realignment and its reading.
    """
    pp, pv = previews_profile(profile), profile.previews
    tasks = tasks_of(pp)
    alphas = simplex_grid(len(tasks), pv.n_alpha)
    sources = {t.name: [finetuned(pp, t.name, seed=s, optimizer=o).key
                        for o, s in runs(kind, seed, pp)] for t in tasks}
    cfg = {"kind": kind, "seed": seed, "split": split, "alphas": alphas, "sources": sources,
           "prior_rel": pv.prior_rel, "em_iters": pv.em_iters,
           "sg": [pv.sg_estimator, pv.sg_batches],
           "realign": realign_config(_previews_realign(pp), "head")}

    def run() -> dict:
        at = previewer(profile, kind, seed)
        data = make_dataset(pp, split)
        out: dict = {"alphas": alphas, "original": [], "realigned": [],
                     "prior_precision": at.prior_precision,
                     "seconds": {"merge": 0.0, "evaluate": 0.0, "realign": 0.0}}
        for alpha in alphas:
            r = at(alpha, data)
            out["original"].append(r["original"])
            out["realigned"].append(r["realigned"])
            for k, dt in r["seconds"].items():
                out["seconds"][k] += dt
        return out

    return cache.memo("preview_grid", cfg, run)


def sensitivity(profile: Profile) -> list[tuple[str, str, list[tuple[object, Profile]]]]:
    """``previews.sensitivity`` as ``(name, key, [(value, profile with that value), ...])`` per
    knob. The profile's own value joins each knob's values (sorted), so every sweep passes through
    the default, whose preview grids the notebook has anyway."""
    return [(k.name, k.key, knob_profiles(profile, k, "previews.sensitivity",
                                          sorted(set(k.values) | {setting(profile, k.key)})))
            for k in profile.previews.sensitivity]
