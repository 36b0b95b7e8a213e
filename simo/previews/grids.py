"""Preview grids against real runs: the cached steps of notebook 05.

From the per-task runs (:func:`simo.steps.finetuned`, AdamW or IVON) build each task's posterior
(:func:`posterior`, one registered :data:`KINDS` entry per kind), preview the merged encoder at
every α of a grid, read it with the single-task heads as they are and after a brief head
realignment (:func:`preview_grid`), and train the real weighted runs it is judged against
(:func:`weighted_run`, one ground truth per optimizer of :data:`TRUTHS`).

Heads of a mixture: EM may settle each task in a different component (a different seed's run),
so each task is read with the heads of the run whose component has the largest responsibility at
the previewed θ, not always the first seed's (:func:`components_of`).

Why an SGD ground truth: AdamW normalises each head's update whatever its α_t, so real AdamW
finetuning barely moves with α in the interior and no preview can be told apart by its best α.
With SGD (momentum 0.9) a task's gradient, hence its update, scales with α_t. SGD shares one
learning rate between encoder and heads (no AdamW-style normalisation to balance), chosen on
validation at uniform α from :data:`SGD_LRS` (:func:`sgd_lr_choice`).
"""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Sequence

import torch

from simo import cache
from simo.config import Profile, knob_profiles, setting, with_settings
from simo.data import make_dataset, subset
from simo.errors import PreviewError, TaskError, one_of
from simo.merged import fisher_of
from simo.previews.judge import task_points
from simo.previews.posterior import (Posterior, check_alpha, gaussian, isotropic, load_posterior,
                                     mixture, preview, prior_precision, save_posterior,
                                     simplex_grid)
from simo.realign import evaluate_encoders, realign_heads
from simo.realign import config_of as realign_config
from simo.steps import finetuned, heads_of, model_from, pretrained, tasks_of
from simo.tasks import Task
from simo.train import Phase, evaluate, multitask_loss, run_phases

TRUTHS = ("adamw", "ivon", "sgd")  # optimizers of the ground truth (weighted finetuning)
SGD_LRS = (0.01, 0.03, 0.1, 0.3)  # SGD's learning rate (encoder and heads), chosen on validation
SGD_MOMENTUM = 0.9


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
    """Ground truth at ``alpha``: real finetuning on Σ_t α_t ℓ_t over ``previews.tasks``, with
    one of :data:`TRUTHS` (``sgd``: :func:`sgd_run` at the learning rate of :func:`sgd_lr`)."""
    if optimizer not in TRUTHS:
        raise PreviewError(one_of(optimizer, TRUTHS, "ground-truth optimizer"))
    pp = previews_profile(profile)
    alpha = check_alpha(alpha, len(pp.tasks))
    if optimizer == "sgd":
        return sgd_run(profile, alpha, seed, sgd_lr(profile), progress)
    return finetuned(pp, list(pp.tasks), seed=seed, weights=dict(zip(pp.tasks, alpha)),
                     optimizer=optimizer, progress=progress)


def uniform_alpha(profile: Profile) -> list[float]:
    """Every previews task weighted alike: where SGD's learning rate is chosen."""
    n = len(profile.previews.tasks)
    return [1.0 / n] * n


def sgd_run(profile: Profile, alpha: Sequence[float], seed: int, lr: float,
            progress: bool = True) -> cache.Artifact:
    """Weighted finetuning on Σ_t α_t ℓ_t whose full phase steps with SGD (momentum 0.9) at ``lr``
    (encoder and heads), cached like :func:`simo.steps.finetuned`'s runs (same head phase, budget,
    clipping, warm-up, seeds and resumable checkpoints; tensors ``encoder.*``, ``head.<task>.*``;
    meta ``history, steps, samples, seconds, val, test`` and the ``lr``)."""
    pp = previews_profile(profile)
    names = list(pp.tasks)
    alpha = check_alpha(alpha, len(names))
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise PreviewError(f"SGD lr={lr!r} must be a number > 0, e.g. one of {SGD_LRS}")
    weights = dict(zip(names, alpha))
    base = pretrained(pp, progress)
    ft = {k: v for k, v in dataclasses.asdict(pp.finetune).items() if not k.startswith("ivon_")}
    cfg = {"data": dataclasses.asdict(pp.data), "model": dataclasses.asdict(pp.model),
           "finetune": ft, "tasks": names, "seed": seed, "pretrained": base.key,
           "weights": weights, "optimizer": "sgd", "momentum": SGD_MOMENTUM, "lr": float(lr)}

    def compute(out: Path, partial: Path) -> None:
        tasks = tasks_of(pp)
        model = model_from(pp, tasks, base.tensors(), seed=seed)
        train, val = make_dataset(pp, "train"), make_dataset(pp, "val")
        res = _train_sgd(pp, model, tasks, weights, train, val, seed, float(lr), partial,
                         f"{'+'.join(names)} SGD lr {lr:g} (seed {seed})", progress)
        tensors = {f"encoder.{k}": v for k, v in model.encoder.vit.state_dict().items()}
        for t in tasks:
            tensors.update({f"head.{t.name}.{k}": v
                            for k, v in model.heads[t.name].state_dict().items()})
        cache.save_tensors(out / cache.TENSORS, tensors)
        b = pp.eval_batch_size
        cache.save_json(out / cache.META, {
            "history": res.history, "steps": res.steps, "samples": res.samples,
            "seconds": res.seconds, "lr": float(lr), "val": evaluate(model, tasks, val, b),
            "test": evaluate(model, tasks, make_dataset(pp, "test"), b)})

    return cache.get_or_compute("weighted_sgd", cfg, compute)


def _train_sgd(pp: Profile, model, tasks: list[Task], weights: dict[str, float], train: dict,
               val: dict, seed: int, lr: float, partial: Path, desc: str, progress: bool):
    """:func:`simo.train.finetune`'s two phases with SGD in the full one: the same head phase
    (AdamW, every head from a trained start, also at α_t = 0), then encoder + heads on the
    weighted loss. A head whose α_t is 0 gets no gradient, so SGD leaves it as the head phase did.
    """
    ft = pp.finetune
    heads = [p for t in tasks for p in model.heads[t.name].parameters()]
    enc = [p for p in model.encoder.parameters() if p.requires_grad]
    head_loss = multitask_loss(model, tasks, {t.name: 1.0 for t in tasks}, encoder_frozen=True)
    phases = [Phase("head", ft.head_steps, [{"params": heads, "lr": ft.head_lr}], head_loss),
              Phase("full", ft.steps, [{"params": enc, "lr": lr}, {"params": heads, "lr": lr}],
                    multitask_loss(model, tasks, weights), ft.warmup,
                    optimizer=lambda groups: torch.optim.SGD(groups, momentum=SGD_MOMENTUM))]
    val_sub = {k: v[:ft.n_eval] for k, v in val.items()}
    return run_phases(model, phases, train, batch_size=ft.batch_size, seed=seed,
                      weight_decay=ft.weight_decay, grad_clip=ft.grad_clip,
                      eval_fn=lambda: {"val": evaluate(model, tasks, val_sub, pp.eval_batch_size)},
                      eval_every=ft.eval_every, partial_dir=partial, ckpt_every=ft.ckpt_every,
                      scales=ft.scales, desc=desc, progress=progress)


def sgd_lr_choice(profile: Profile, seed: int = 0) -> dict:
    """SGD's learning rate, chosen on validation: :func:`sgd_run` at uniform α for each of
    :data:`SGD_LRS`, scored by the mean over tasks of its validation task points (100 = the
    AdamW single-task run of ``seed`` on validation, the unit the report judges in).

    Returns ``{"lrs", "val_points", "lr", "edge"}``; ``edge``: the best is the smallest or the
    largest of the grid, so a wider grid might do better (the report says so).
    """
    pp = previews_profile(profile)
    tasks = tasks_of(pp)
    ref = {t.name: finetuned(pp, t.name, seed=seed, progress=False).meta["val"][t.name]
           for t in tasks}
    scores = []
    for lr in SGD_LRS:
        pts = task_points([sgd_run(profile, uniform_alpha(pp), seed, lr, False).meta["val"]],
                          ref, tasks)
        scores.append(sum(p[0] for p in pts.values()) / len(pts))
    ok = [x if math.isfinite(x) else -math.inf for x in scores]  # a diverged lr never wins
    best = max(range(len(SGD_LRS)), key=lambda i: (ok[i], -i))  # ties: the smaller lr
    return {"lrs": list(SGD_LRS), "val_points": scores, "lr": SGD_LRS[best],
            "edge": best in (0, len(SGD_LRS) - 1)}


def sgd_lr(profile: Profile, seed: int = 0) -> float:
    """The learning rate of every SGD ground-truth run (:func:`sgd_lr_choice`)."""
    return sgd_lr_choice(profile, seed)["lr"]


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


def components_of(responsibilities: Sequence[Sequence[float]], alpha: Sequence[float]
                  ) -> list[int]:
    """Per task, the mixture component whose run's heads read the preview: the argmax of its
    responsibilities at the previewed θ (ties, and tasks with α_t = 0, which EM does not weigh:
    the first)."""
    if len(responsibilities) != len(alpha):
        raise PreviewError(f"{len(responsibilities)} rows of responsibilities for {len(alpha)} "
                           "task weights; give one row per task")
    return [0 if a == 0 else max(range(len(r)), key=lambda k: (float(r[k]), -k))
            for r, a in zip(responsibilities, alpha)]


@dataclasses.dataclass
class Previewer:
    """Previews one kind of posterior at any α: merge, read with the single-task heads as they
    are, then realign the heads briefly on the previewed encoder and read again (:func:`previewer`).
    ``heads[task][k]`` are the heads of the run behind mixture component k (one for K = 1).
    """

    profile: Profile  # the previews profile, its head realignment set to previews.realign_*
    tasks: list[Task]
    posteriors: list
    heads: dict[str, list[dict[str, torch.Tensor]]]
    prior_mean: dict[str, torch.Tensor]
    prior_precision: float
    realign_data: dict
    seed: int = 0

    def __post_init__(self) -> None:
        for t, post in zip(self.tasks, self.posteriors):
            if len(self.heads.get(t.name, [])) != post.k:
                raise PreviewError(f"task {t.name!r} has {len(self.heads.get(t.name, []))} "
                                   f"heads for a {post.k}-component posterior; give one per run")

    def __call__(self, alpha: Sequence[float], data: dict, realign: bool = True) -> dict:
        """``{"original": metrics, "realigned": metrics or None, "components": {task: k},
        "seconds": {"merge", "evaluate", "realign"}}`` of the preview at ``alpha``, read on
        ``data`` with each task's heads of its component k (:func:`components_of`)."""
        t0 = time.perf_counter()
        resp: list[list[float]] = []
        enc = preview(self.posteriors, alpha, self.prior_mean, self.prior_precision,
                      iters=self.profile.previews.em_iters, responsibilities=resp)
        chosen = dict(zip([t.name for t in self.tasks], components_of(resp, alpha)))
        heads = {t: self.heads[t][k] for t, k in chosen.items()}
        encs = {t.name: enc for t in self.tasks}
        t1 = time.perf_counter()
        out = {"original": evaluate_encoders(self.profile, self.tasks, encs, heads, data),
               "realigned": None, "components": chosen}
        t2 = time.perf_counter()
        if realign:
            new, _ = realign_heads(self.profile, self.tasks, encs, heads, self.realign_data,
                                   self.seed)
            out["realigned"] = evaluate_encoders(self.profile, self.tasks, encs, new, data)
        t3 = time.perf_counter()
        out["seconds"] = {"merge": t1 - t0, "evaluate": t2 - t1, "realign": t3 - t2}
        return out


def previewer(profile: Profile, kind: str, seed: int = 0) -> Previewer:
    """The :class:`Previewer` of ``kind`` posteriors from the per-task runs of ``seed``. Heads come
    from the same runs (for a mixture, every component's run: each task is read with the heads of
    its component at the previewed θ); the prior precision is ``previews.prior_rel`` × the
    posteriors' median precision."""
    pp, pv = previews_profile(profile), profile.previews
    tasks = tasks_of(pp)
    posts = [posterior(pp, t.name, kind, seed) for t in tasks]
    heads = {t.name: [heads_of(finetuned(pp, t.name, seed=s, optimizer=o))[t.name]
                      for o, s in runs(kind, seed, pp)] for t in tasks}
    return Previewer(_previews_realign(pp), tasks, posts, heads, pretrained(pp).tensors(),
                     prior_precision(posts, pv.prior_rel),
                     subset(make_dataset(pp, "train"), pv.realign_samples, seed), seed)


def preview_grid(profile: Profile, kind: str, seed: int = 0, split: str = "test") -> dict:
    """:class:`Previewer` results at every α of the grid (cached, with the summed timings).

    Returns ``{"alphas", "original": [metrics per α], "realigned": [...], "components":
    [{task: component whose heads read it} per α], "prior_precision", "seconds": {"merge",
    "evaluate", "realign"}}``; "evaluate" times the original-head reading, "realign" the
    realignment and its reading.
    """
    pp, pv = previews_profile(profile), profile.previews
    tasks = tasks_of(pp)
    alphas = simplex_grid(len(tasks), pv.n_alpha)
    sources = {t.name: [finetuned(pp, t.name, seed=s, optimizer=o).key
                        for o, s in runs(kind, seed, pp)] for t in tasks}
    cfg = {"kind": kind, "seed": seed, "split": split, "alphas": alphas, "sources": sources,
           "prior_rel": pv.prior_rel, "em_iters": pv.em_iters,
           "sg": [pv.sg_estimator, pv.sg_batches],
           "realign": realign_config(_previews_realign(pp), "head"),
           "heads": "em_argmax"}  # each task read with its argmax-responsibility run's heads

    def run() -> dict:
        at = previewer(profile, kind, seed)
        data = make_dataset(pp, split)
        out: dict = {"alphas": alphas, "original": [], "realigned": [], "components": [],
                     "prior_precision": at.prior_precision,
                     "seconds": {"merge": 0.0, "evaluate": 0.0, "realign": 0.0}}
        for alpha in alphas:
            r = at(alpha, data)
            out["original"].append(r["original"])
            out["realigned"].append(r["realigned"])
            out["components"].append(r["components"])
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
