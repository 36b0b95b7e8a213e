"""Realignment: make a merged encoder's features and the task heads agree again, cheaply.

Two fixes on a small labelled set, both leaving the merged encoder frozen:

* heads (:func:`realign_heads`): retrain each head on the encoder's features, computed once
  (:func:`encode`), so a step costs only the heads;
* representation (:func:`realign_representation`): zero-initialised low-rank adapters
  (:mod:`simo.models.adapters`) on the encoder, trained with the heads on the multi-task loss.

Plus what both need: scoring each task's head on its encoder (:func:`evaluate_encoders`) and the
cost of a run (steps, distinct samples, seconds) that the protocol compares with joint MTL.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from simo.config import Profile
from simo.models import MultiTaskModel
from simo.models.adapters import add_adapters
from simo.steps import model_from
from simo.tasks import Task
from simo.train import Batch, LoopResult, Phase, evaluate, multitask_loss, run_phases

# the kinds of realignment, and the realign.* settings that a cached result of each depends on
SETTINGS = {"head": ("n_samples", "head_steps", "head_lr", "batch_size"),
        "repr": ("n_samples", "head_lr", "batch_size", "adapter_rank", "adapter_steps",
                 "adapter_lr", "adapter_where")}


def config_of(profile: Profile, kind: str | None) -> dict | None:
    """The realignment settings a cached result of ``kind`` depends on (None for no kind)."""
    r = dataclasses.asdict(profile.realign)
    return {k: r[k] for k in SETTINGS[kind]} if kind else None


@torch.no_grad()
def encode(encoder: nn.Module, images: Tensor, batch_size: int = 128) -> dict[str, Tensor]:
    """Features of a frozen encoder as a flat dict (``f0..``, ``c0..``): computed once, reused."""
    encoder.eval()
    parts: list[tuple[list[Tensor], list[Tensor | None]]] = []
    device = next(encoder.parameters()).device
    for i in range(0, len(images), batch_size):
        parts.append(encoder(images[i:i + batch_size].to(device)))
    out = {}
    for j in range(len(parts[0][0])):
        out[f"f{j}"] = torch.cat([p[0][j] for p in parts]).cpu()
        if parts[0][1][j] is not None:
            out[f"c{j}"] = torch.cat([p[1][j] for p in parts]).cpu()
    return out


def _unpack(batch: Batch) -> tuple[list[Tensor], list[Tensor | None]]:
    n = sum(1 for k in batch if k.startswith("f") and k[1:].isdigit())
    return [batch[f"f{j}"] for j in range(n)], [batch.get(f"c{j}") for j in range(n)]


def retrain_heads(model: nn.Module, tasks: Sequence[Task], data: Batch, *, steps: int, lr: float,
                  batch_size: int, seed: int, eval_batch_size: int = 128,
                  progress: bool = False) -> LoopResult:
    """Head realignment: freeze the (merged) encoder, retrain each head on a small labelled set.

    Features are computed once on ``data`` (no augmentation: ViT features are not flip
    equivariant), so a step costs only the heads. Heads start from their current weights (the
    original single-task heads), which beats fresh heads (docs/design.md, trap 5).
    """
    feats = encode(model.encoder, data["image"], eval_batch_size)
    table = {**feats, **{t.target: data[t.target] for t in tasks}}
    size = tuple(data["image"].shape[-2:])

    def loss_fn(batch: Batch, _g: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        f, c = _unpack(batch)
        total = torch.zeros((), device=f[0].device)
        for t in tasks:
            total = total + t.loss(model.heads[t.name](f, c, size), batch[t.target])
        return total, {}

    params = [p for t in tasks for p in model.heads[t.name].parameters()]
    phase = Phase("heads", steps, [{"params": params, "lr": lr}], loss_fn)
    return run_phases(model, [phase], table, batch_size=batch_size, seed=seed, flip=False,
                      desc="head realignment", progress=progress)


def models_per_encoder(profile: Profile, tasks: Sequence[Task], encoders: dict[str, dict],
                        heads: dict[str, dict]) -> list[tuple[list[Task], MultiTaskModel]]:
    """One model per distinct encoder, carrying the heads of the tasks that share it."""
    groups: dict[int, list[Task]] = {}
    for t in tasks:
        groups.setdefault(id(encoders[t.name]), []).append(t)
    return [(ts, model_from(profile, ts, encoders[ts[0].name], {t.name: heads[t.name] for t in ts}))
            for ts in groups.values()]


def evaluate_encoders(profile: Profile, tasks: Sequence[Task], encoders: dict[str, dict],
                      heads: dict[str, dict], data: dict) -> dict[str, dict[str, float]]:
    """Metrics of each task's head on its encoder (shared encoders are run once)."""
    out: dict[str, dict[str, float]] = {}
    for ts, model in models_per_encoder(profile, tasks, encoders, heads):
        out.update(evaluate(model, ts, data, profile.eval_batch_size))
    return out


def cost(*runs) -> dict[str, float]:
    """Optimizer steps, distinct labelled samples and wall seconds of one or more training runs."""
    return {"steps": sum(r.steps for r in runs), "samples": max(r.samples for r in runs),
            "seconds": sum(r.seconds for r in runs)}


def realign_heads(profile: Profile, tasks: Sequence[Task], encoders: dict[str, dict],
                  heads: dict[str, dict], data: dict, seed: int = 0
                  ) -> tuple[dict[str, dict], dict[str, float]]:
    """Head realignment on each (merged) encoder: heads start from ``heads``, encoder frozen.

    Returns the new heads and the cost (steps summed over distinct encoders, samples, seconds).
    """
    r = profile.realign
    new: dict[str, dict] = {}
    runs = []
    for ts, model in models_per_encoder(profile, tasks, encoders, heads):
        runs.append(retrain_heads(model, ts, data, steps=r.head_steps, lr=r.head_lr,
                                  batch_size=r.batch_size, seed=seed,
                                  eval_batch_size=profile.eval_batch_size))
        new.update({t.name: {k: v.clone() for k, v in model.heads[t.name].state_dict().items()}
                    for t in ts})
    return new, cost(*runs)


EVALS = 6  # early stopping: validation checks per representation realignment


def realign_representation(profile: Profile, tasks: Sequence[Task], encoder: dict,
                           heads: dict[str, dict], data: dict, seed: int = 0,
                           score: Callable[[MultiTaskModel], float] | None = None
                           ) -> tuple[MultiTaskModel, dict]:
    """Representation realignment: zero-initialised adapters on the frozen merged encoder.

    Adapters and the original heads train together with the equal-weight multi-task loss on the
    small labelled set (adapters at ``adapter_lr``, heads at ``head_lr``), starting exactly at the
    merged model. With ``score`` (higher = better, e.g. validation Δ_MTL) the run stops early in
    effect: it is scored :data:`EVALS` times and the best-scoring state is kept, so its steps are
    chosen on validation like the baselines' budgets. Returns the adapted model and the cost
    (steps, samples, seconds: the whole run), plus ``best_step`` and the ``curve`` it was chosen on.
    """
    r = profile.realign
    model = model_from(profile, tasks, encoder, heads)
    adapters = add_adapters(model.encoder.vit, r.adapter_rank, r.adapter_where)
    head_params = [p for t in tasks for p in model.heads[t.name].parameters()]
    phase = Phase("adapters", r.adapter_steps,
                  [{"params": adapters, "lr": r.adapter_lr}, {"params": head_params,
                                                              "lr": r.head_lr}],
                  multitask_loss(model, tasks, {t.name: 1.0 for t in tasks}),
                  warmup=min(20, r.adapter_steps // 10))
    best: dict = {"score": -math.inf, "step": r.adapter_steps, "state": None}

    def check() -> dict:
        x = score(model)
        if x > best["score"]:
            best.update(score=x, state={k: v.clone() for k, v in model.state_dict().items()})
        return {"val_score": x}

    every = max(1, r.adapter_steps // EVALS) if score is not None else 0
    res = run_phases(model, [phase], data, batch_size=r.batch_size, seed=seed,
                     eval_fn=check if score is not None else None, eval_every=every,
                     desc="representation realignment", progress=False)
    curve = [(h["step"], h["val_score"]) for h in res.history]
    if best["state"] is not None:
        model.load_state_dict(best["state"])
        best["step"] = max(curve, key=lambda c: (c[1], -c[0]))[0]
    return model.eval(), {**cost(res), "best_step": best["step"], "curve": curve}
