"""The cached training steps: scenes -> ``pretrained`` encoder -> ``finetuned`` models.

Each step is get-or-compute (:mod:`simo.cache`), keyed by its settings, the keys of its inputs and
the source of the code that computes it. Every notebook calls these, so each notebook runs alone
and a batch run reuses work: the first notebook that needs a finetune trains it, the next loads it.
Merging and realignment sit on top, in :mod:`simo.merged`; previews in :mod:`simo.previews`.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import torch

from simo import cache, paths
from simo.config import Profile
from simo.data import make_dataset
from simo.errors import TaskError, one_of
from simo.models import MultiTaskModel, build_model
from simo.models.encoder import build_encoder, check_weights_file
from simo.tasks import Task, get_tasks
from simo.train import (IVON_KEYS, WEIGHTINGS, check_weights, curvature, evaluate, finetune,
                        pick_device, pretrain)

INITS = ("pretrained", "scratch")
OPTIMIZERS = ("adamw", "ivon")


def tasks_of(profile: Profile, names: Sequence[str] | None = None) -> list[Task]:
    return get_tasks(list(names or profile.tasks), num_classes=profile.data.num_classes)


def _data_cfg(profile: Profile) -> dict:
    """The data settings a finetune depends on (not the pretraining scenes: those enter through
    the pretrained encoder's key)."""
    return {k: v for k, v in dataclasses.asdict(profile.data).items() if k != "n_pretrain"}


def _encoder_cfg(m) -> dict:
    """The model settings pretraining depends on (heads and feature taps do not matter)."""
    return {k: getattr(m, k) for k in ("arch", "patch_size", "embed_dim", "depth", "num_heads")}


def pretrained(profile: Profile, progress: bool = True) -> cache.Artifact:
    """The pretrained encoder: SimMIM on the pretraining scenes, or ``model.weights`` from disk.

    Tensors are the timm ViT state dict (``vit`` keys); meta holds the pretraining curve.
    """
    m = profile.model
    if m.weights:
        # checked on every call, not only when the cache misses: a damaged release is never used
        w = check_weights_file(m.weights, m.weights_sha256) if m.weights_sha256 else \
            paths.repo_file(m.weights)
        # the file's hash when the profile pins one (checked on load: the key is the same in every
        # checkout), else its path and size: a replaced file never reuses another's results
        cfg = {"model": dataclasses.asdict(m), "image_size": profile.data.image_size,
               "file": None if m.weights_sha256 else str(w.resolve()),
               "bytes": w.stat().st_size if w.is_file() and not m.weights_sha256 else -1}

        def load(out: Path, _partial: Path) -> None:
            enc = build_encoder(m, profile.data.image_size)
            cache.save_tensors(out / cache.TENSORS, enc.vit.state_dict())
            cache.save_json(out / cache.META, {"source": str(w), "history": []})

        return cache.get_or_compute("weights", cfg, load)

    d = profile.data
    cfg = {"data": {"dataset": d.dataset, "data_root": d.data_root, "image_size": d.image_size,
                    "n_pretrain": d.n_pretrain},
           "encoder": _encoder_cfg(m), "pretrain": dataclasses.asdict(profile.pretrain),
           "seed": 0}

    def compute(out: Path, partial: Path) -> None:
        images = make_dataset(profile, "pretrain")["image"]
        enc = build_encoder(m, profile.data.image_size, seed=0).to(pick_device(profile.device))
        res = pretrain(enc.vit, images, profile.pretrain, seed=0, partial_dir=partial,
                       progress=progress)
        cache.save_tensors(out / cache.TENSORS, enc.vit.state_dict())
        cache.save_json(out / cache.META, {"history": res.history, "steps": res.steps,
                                           "samples": res.samples, "seconds": res.seconds})

    return cache.get_or_compute("pretrained", cfg, compute)


def model_from(profile: Profile, tasks: Sequence[Task], encoder: dict[str, torch.Tensor],
               heads: dict[str, dict[str, torch.Tensor]] | None = None,
               seed: int = 0) -> MultiTaskModel:
    """Assemble a model from an encoder state dict and per-task head state dicts."""
    model = build_model(profile, tasks, seed=seed)
    model.encoder.vit.load_state_dict(encoder)
    for name, sd in (heads or {}).items():
        model.heads[name].load_state_dict(sd)
    return model.to(pick_device(profile.device)).eval()


def finetuned(profile: Profile, task: str | Sequence[str], seed: int = 0,
              init: str = "pretrained", weights: dict[str, float] | None = None,
              weighting: str = "equal", optimizer: str = "adamw",
              progress: bool = True) -> cache.Artifact:
    """A finetuned model (two-phase, warm-up + cosine) for one task or several (joint MTL).

    Joint runs train ``finetune.mtl_steps`` full steps (0: as many as a single-task run), with
    equal loss weights, fixed ``weights`` or Kendall's ``weighting="uncertainty"``. Phase 2 steps
    with AdamW or (``optimizer="ivon"``, the profile's ``finetune.ivon_*`` settings) IVON.
    Tensors: ``encoder.<vit key>``, ``head.<task>.<key>`` and ``curvature.<vit key>`` (AdamW's
    final ``exp_avg_sq`` or IVON's ``hess``: the previews' precisions); meta: validation curve,
    optimizer steps, distinct samples seen, wall seconds, and final ``val``/``test`` metrics.
    """
    names = [task] if isinstance(task, str) else list(task)
    if init not in INITS:
        raise TaskError(one_of(init, INITS, "init"))
    if weighting not in WEIGHTINGS:
        raise TaskError(one_of(weighting, WEIGHTINGS, "weighting"))
    if optimizer not in OPTIMIZERS:
        raise TaskError(one_of(optimizer, OPTIMIZERS, "optimizer"))
    ivon = ivon_settings(profile) if optimizer == "ivon" else None
    tasks = tasks_of(profile, names)
    weights = check_weights(tasks, weights) if weights is not None else None
    base = pretrained(profile, progress) if init == "pretrained" else None
    ft = {k: v for k, v in dataclasses.asdict(profile.finetune).items()
          if not k.startswith("ivon_")}  # the IVON settings enter as "ivon", for IVON runs only
    mtl_steps = ft.pop("mtl_steps")
    if len(names) > 1 and mtl_steps:
        ft["steps"] = mtl_steps
    cfg = {"data": _data_cfg(profile), "model": dataclasses.asdict(profile.model),
           "finetune": ft, "tasks": names, "seed": seed, "init": init,
           "pretrained": base.key if base else None, "weights": weights, "weighting": weighting,
           "optimizer": optimizer, "ivon": ivon}

    def compute(out: Path, partial: Path) -> None:
        model = build_model(profile, tasks, seed=seed)
        if base is not None:
            model.encoder.vit.load_state_dict(base.tensors())
        model.to(pick_device(profile.device))
        train, val = make_dataset(profile, "train"), make_dataset(profile, "val")
        res = finetune(model, tasks, train, val, profile.finetune, seed=seed, weights=weights,
                       weighting=weighting, steps=ft["steps"], ivon=ivon,
                       eval_batch_size=profile.eval_batch_size, partial_dir=partial,
                       desc=f"{'+'.join(names)} ({init}, seed {seed})", progress=progress)
        test = make_dataset(profile, "test")
        tensors = {f"encoder.{k}": v for k, v in model.encoder.vit.state_dict().items()}
        for t in tasks:
            tensors.update({f"head.{t.name}.{k}": v
                            for k, v in model.heads[t.name].state_dict().items()})
        tensors.update({f"curvature.{k}": v for k, v in
                        curvature(model, res.optimizer, "encoder.vit.").items()})
        cache.save_tensors(out / cache.TENSORS, tensors)
        cache.save_json(out / cache.META, {
            "history": res.history, "steps": res.steps, "samples": res.samples,
            "seconds": res.seconds,
            "val": evaluate(model, tasks, val, profile.eval_batch_size),
            "test": evaluate(model, tasks, test, profile.eval_batch_size)})

    step = "finetuned" if len(names) == 1 else "multitask"
    return cache.get_or_compute(step, cfg, compute)


def ivon_settings(profile: Profile) -> dict[str, float]:
    """The profile's IVON settings (``finetune.ivon_<key>``), as :func:`simo.train.ivon_optimizer`
    takes them."""
    return {k: getattr(profile.finetune, f"ivon_{k}") for k in IVON_KEYS}


def heads_of(art: cache.Artifact) -> dict[str, dict[str, torch.Tensor]]:
    """Per-task head state dicts of a finetuned artifact."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in art.tensors("head.").items():
        task, key = k.split(".", 1)
        out.setdefault(task, {})[key] = v
    return out


def load_finetuned(profile: Profile, art: cache.Artifact) -> MultiTaskModel:
    """The model stored in a finetuned artifact."""
    heads = heads_of(art)
    return model_from(profile, tasks_of(profile, list(heads)), art.tensors("encoder."), heads)


def single_task_models(profile: Profile, seed: int = 0,
                       progress: bool = True) -> dict[str, cache.Artifact]:
    """The finetuned single-task model of every task of the profile (cached: 01 trains them)."""
    return {t: finetuned(profile, t, seed=seed, progress=progress) for t in profile.tasks}
