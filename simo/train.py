"""One training loop for every regime: SimMIM pretraining, single-task (two-phase), weighted multi-task.

The core, :func:`run_phases`, owns what every regime shares: AdamW (or IVON, for the previews'
posteriors) with linear warm-up + cosine decay (a one-cycle shape), gradient clipping, NaN
detection, a validation curve, progress bars and resumable checkpoints. Regimes differ only in which
parameters train, what the loss is and which optimizer steps.

Determinism and resume: the minibatch of global step ``s`` is drawn from a generator seeded with
``(seed, s)``, so a run resumed from a checkpoint at step ``s`` continues exactly as the
uninterrupted run would (model + optimizer state are restored bit for bit). IVON's weight noise
comes from the global torch RNG, so each step reseeds it from ``(seed, s)`` inside a forked RNG.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from simo.progress import tqdm

from simo import cache
from simo.errors import TrainingError, one_of
from simo.tasks import Task

Batch = dict[str, Tensor]


# ------------------------------------------------------------------ pieces -------------------------

def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up to 1, then cosine decay to 0 at ``total`` (a one-cycle shape)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def sample_batch(data: Batch, batch_size: int, g: torch.Generator, flip: bool = True,
                 scales: Sequence[float] = (1.0,)) -> tuple[Batch, Tensor]:
    """A random minibatch (with replacement) and its indices; optional horizontal flips.

    Flipping mirrors every spatial field and negates the x component of surface normals.
    ``scales`` other than 1 add the paper's random zoom + crop (:func:`simo.data.random_zoom`).
    """
    n = len(next(iter(data.values())))
    idx = torch.randint(n, (batch_size,), generator=g)
    batch = {k: v[idx] for k, v in data.items()}
    if flip:
        f = torch.rand(batch_size, generator=g) < 0.5
        for k, v in batch.items():
            batch[k] = torch.where(f.view(-1, *[1] * (v.ndim - 1)), v.flip(-1), v)
        if "normal" in batch:
            sign = torch.ones(batch_size, 3, 1, 1)
            sign[f, 0] = -1.0
            batch["normal"] = batch["normal"] * sign
    if any(s != 1.0 for s in scales):
        from simo.data import random_zoom

        batch = random_zoom(batch, scales, g)
    return batch, idx


LossFn = Callable[[Batch, torch.Generator], tuple[Tensor, dict[str, float]]]


def to_device(batch: Batch, device: torch.device) -> Batch:
    """Move a minibatch to the model's device (a no-op on CPU)."""
    if device.type == "cpu":
        return batch
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, so the gpu profile needs no code change."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class Phase:
    """``steps`` optimizer steps of ``loss_fn`` on ``groups`` (AdamW param groups with base ``lr``).

    ``loss_fn(batch, generator)`` returns the scalar loss and a dict of floats to log.
    ``optimizer(groups)`` builds the phase's optimizer; None: AdamW with the loop's weight decay.
    """

    name: str
    steps: int
    groups: list[dict]
    loss_fn: LossFn
    warmup: int = 0
    optimizer: Callable[[list[dict]], torch.optim.Optimizer] | None = None


@dataclass
class LoopResult:
    history: list[dict] = field(default_factory=list)
    steps: int = 0
    samples: int = 0  # distinct training samples seen
    seconds: float = 0.0
    optimizer: torch.optim.Optimizer | None = None  # the last phase's (its curvature: previews)


def _opt_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict]:
    """Optimizer state as tensors + JSON. IVON keeps tensors in its param groups (``hess``,
    ``momentum``) and its bias-correction step count outside the state dict: both are saved."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        if not isinstance(st, dict):  # IVON's per-step scratch ("count", "avg_grad", ...)
            scalars[f"{pid}/"] = st.item() if isinstance(st, Tensor) else st
            continue
        for name, v in st.items():
            if isinstance(v, Tensor):
                tensors[f"opt/{pid}/{name}"] = v
            else:
                scalars[f"{pid}/{name}"] = v
    groups = []
    for i, g in enumerate(sd["param_groups"]):
        groups.append({k: v for k, v in g.items() if not isinstance(v, Tensor)})
        tensors.update({f"optg/{i}/{k}": v for k, v in g.items() if isinstance(v, Tensor)})
    return tensors, {"scalars": scalars, "groups": groups,
                     "current_step": getattr(opt, "current_step", None)}


def _opt_load(opt: torch.optim.Optimizer, tensors: Mapping[str, Tensor], info: dict) -> None:
    state: dict[int, dict] = {}
    for k, v in tensors.items():
        if k.startswith("opt/"):
            _, pid, name = k.split("/", 2)
            state.setdefault(int(pid), {})[name] = v
    groups = [dict(g) for g in info["groups"]]
    for k, v in tensors.items():
        if k.startswith("optg/"):
            _, i, name = k.split("/", 2)
            groups[int(i)][name] = v
    for k, v in info["scalars"].items():
        pid, name = k.split("/", 1)
        if not name:
            state[pid] = v
        else:
            state.setdefault(int(pid), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": groups})
    if info.get("current_step") is not None:
        opt.current_step = info["current_step"]


class Checkpointer:
    """Resumable state in ``partial_dir``: model + optimizer tensors, JSON for the rest."""

    def __init__(self, partial_dir: Path | None, every: int):
        self.dir = Path(partial_dir) if partial_dir else None
        self.every = every

    def due(self, step: int) -> bool:
        return self.dir is not None and self.every > 0 and step % self.every == 0

    def save(self, module: nn.Module, opt: torch.optim.Optimizer, state: dict,
             seen: Tensor) -> None:
        tensors, info = _opt_tensors(opt)
        tensors.update({f"model/{k}": v for k, v in module.state_dict().items()})
        tensors["seen"] = seen
        cache.save_tensors(self.dir / "ckpt.safetensors", tensors)
        cache.save_json(self.dir / "ckpt.json", {**state, "opt": info})

    def load(self) -> tuple[dict[str, Tensor], dict] | None:
        if self.dir is None or not (self.dir / "ckpt.json").is_file():
            return None
        info = cache.load_json(self.dir / "ckpt.json")
        tensors = cache.load_tensors(self.dir / "ckpt.safetensors")
        return tensors, info


def run_phases(module: nn.Module, phases: Sequence[Phase], data: Batch, *,
               batch_size: int, seed: int, weight_decay: float = 0.0, grad_clip: float = 0.0,
               eval_fn: Callable[[], dict] | None = None, eval_every: int = 0,
               partial_dir: Path | None = None, ckpt_every: int = 0, flip: bool = True,
               scales: Sequence[float] = (1.0,), desc: str = "train",
               progress: bool = True) -> LoopResult:
    """Run phases back to back; each phase gets a fresh AdamW and its own warm-up/cosine schedule.

    Parameters not listed in the current phase's groups are frozen for that phase. ``eval_fn`` is called every
    ``eval_every`` steps and at the end; its dict lands in the history.
    """
    total = sum(p.steps for p in phases)
    n = len(next(iter(data.values())))
    result = LoopResult()
    seen = torch.zeros(n, dtype=torch.bool)
    ckpt = Checkpointer(partial_dir, ckpt_every)
    start, resumed = 0, ckpt.load()
    if resumed is not None:
        tensors, info = resumed
        module.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model/")})
        seen = tensors["seen"]
        start, result.history = info["step"], info["history"]
    t0 = time.perf_counter()
    was_trainable = [p.requires_grad for p in module.parameters()]
    device = next(module.parameters()).device
    bar = tqdm(total=total, initial=start, desc=desc, disable=not progress, leave=False)
    step_base = 0
    running: list[float] = []
    opt: torch.optim.Optimizer | None = None
    for phase in phases:
        if start >= step_base + phase.steps:
            step_base += phase.steps
            continue
        params = [p for g in phase.groups for p in g["params"]]
        trainable = {id(p) for p in params}
        for p in module.parameters():
            p.requires_grad_(id(p) in trainable)
        groups = [{**g} for g in phase.groups]
        opt = (phase.optimizer(groups) if phase.optimizer is not None else
               torch.optim.AdamW(groups, weight_decay=weight_decay))
        variational = hasattr(opt, "sampled_params")  # IVON: the gradient at a weight sample
        if resumed is not None and start > step_base:
            _opt_load(opt, resumed[0], resumed[1]["opt"])
        module.train()
        for s in range(max(0, start - step_base), phase.steps):
            gstep = step_base + s
            f = lr_factor(s, phase.steps, phase.warmup)
            for g, spec in zip(opt.param_groups, phase.groups):
                g["lr"] = spec["lr"] * f
            gen = step_generator(seed, gstep)
            batch, idx = sample_batch(data, batch_size, gen, flip, scales)
            batch = to_device(batch, device)
            seen[idx] = True
            if variational:
                with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                    torch.manual_seed(seed * 1_000_003 + gstep)
                    with opt.sampled_params(train=True):
                        loss, logs = _backward(phase, batch, gen, opt, params, desc, gstep,
                                               fill_grads=True)
            else:
                loss, logs = _backward(phase, batch, gen, opt, params, desc, gstep,
                                       grad_clip=grad_clip)
            opt.step()
            running.append(loss.item())
            bar.update(1)
            done = gstep + 1
            if eval_fn is not None and eval_every > 0 and (done % eval_every == 0 or done == total):
                rec = {"step": done, "phase": phase.name,
                       "train_loss": sum(running) / len(running), **logs}
                module.eval()
                rec.update(eval_fn())
                result.history.append(rec)
                running = []
                module.train()
            if ckpt.due(done) and done < total:
                ckpt.save(module, opt, {"step": done, "history": result.history}, seen)
        step_base += phase.steps
    bar.close()
    for p, flag in zip(module.parameters(), was_trainable):
        p.requires_grad_(flag)
    module.eval()
    result.steps = total
    result.samples = int(seen.sum())
    result.seconds = time.perf_counter() - t0
    result.optimizer = opt
    return result


def _backward(phase: Phase, batch: Batch, gen: torch.Generator, opt: torch.optim.Optimizer,
              params: list[Tensor], desc: str, gstep: int, grad_clip: float = 0.0,
              fill_grads: bool = False) -> tuple[Tensor, dict[str, float]]:
    """Loss and gradients of one step; a NaN/inf loss is a one-line TrainingError.

    ``fill_grads``: a parameter the loss does not reach gets a zero gradient (IVON needs one for
    every parameter; AdamW instead skips it, which keeps a zero-weight task's head as it is).
    """
    loss, logs = phase.loss_fn(batch, gen)
    if not torch.isfinite(loss):
        raise TrainingError(f"{desc}: loss became {loss.item()} at step {gstep} "
                            f"({phase.name} phase); lower the learning rate or check the "
                            "data for NaN/inf values")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    for p in params if fill_grads else ():
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    return loss, logs


def curvature(module: nn.Module, opt: torch.optim.Optimizer, prefix: str = ""
              ) -> dict[str, Tensor]:
    """Per-parameter curvature an optimizer ends with, by parameter name (under ``prefix``).

    AdamW: its second-moment estimate ``exp_avg_sq`` (an EMA of squared minibatch gradients).
    IVON: its Hessian estimate ``hess`` (one flat vector per param group, in parameter order).
    The previews turn these into posterior precisions (:mod:`simo.previews`).
    """
    names = {id(p): n[len(prefix):] for n, p in module.named_parameters() if n.startswith(prefix)}
    out: dict[str, Tensor] = {}
    for g in opt.param_groups:
        offset = 0
        for p in g["params"]:
            if "hess" in g:
                value = g["hess"][offset:offset + p.numel()].view_as(p)
                offset += p.numel()
            else:
                value = opt.state.get(p, {}).get("exp_avg_sq")
            if id(p) in names and value is not None:
                out[names[id(p)]] = value.detach().clone()
    return out


# ------------------------------------------------------------------ evaluation ---------------------

@torch.no_grad()
def predict_batches(model: nn.Module, data: Batch, batch_size: int,
                    tasks: Sequence[str] | None = None) -> Iterable[tuple[dict[str, Tensor], Batch]]:
    model.eval()
    device = next(model.parameters()).device
    n = len(data["image"])
    for i in range(0, n, batch_size):
        batch = to_device({k: v[i:i + batch_size] for k, v in data.items()}, device)
        yield model(batch["image"], tasks), batch


def evaluate(model: nn.Module, tasks: Sequence[Task], data: Batch,
             batch_size: int = 128) -> dict[str, dict[str, float]]:
    """Dataset-level metrics ``{task: {metric: value}}`` of a multi-head model."""
    states = {t.name: t.new_state() for t in tasks}
    for preds, batch in predict_batches(model, data, batch_size, [t.name for t in tasks]):
        for t in tasks:
            t.update(states[t.name], preds[t.name], batch[t.target])
    return {t.name: t.compute(states[t.name]) for t in tasks}


# ------------------------------------------------------------------ regimes ------------------------

class UncertaintyWeights(nn.Module):
    """Kendall et al. (2018) task weighting: one learned log-variance s_t per task.

    L = Σ_t (exp(−s_t) ℓ_t + s_t) / 2 (LibMTL's form): a task whose loss stays high is down-weighted,
    and the + s_t term stops every weight from collapsing to zero.
    """

    def __init__(self, names: Sequence[str]):
        super().__init__()
        self.names = list(names)
        self.log_var = nn.Parameter(torch.zeros(len(self.names)))

    def forward(self, losses: Mapping[str, Tensor]) -> Tensor:
        return sum((torch.exp(-self.log_var[i]) * losses[n] + self.log_var[i]) / 2
                   for i, n in enumerate(self.names) if n in losses)

    def weights(self) -> dict[str, float]:
        return {n: 0.5 * math.exp(-v) for n, v in zip(self.names, self.log_var.tolist())}


def multitask_loss(model: nn.Module, tasks: Sequence[Task], weights: Mapping[str, float],
                   encoder_frozen: bool = False,
                   uncertainty: UncertaintyWeights | None = None) -> Callable:
    """Σ_t w_t ℓ_t over the model's heads (or Kendall's learned weighting, times w_t).

    With a frozen encoder its forward runs without grad. Tasks with w_t = 0 are skipped entirely.
    """

    def loss_fn(batch: Batch, _g: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        x = batch["image"]
        if encoder_frozen:
            with torch.no_grad():
                feats, cls = model.encoder(x)
        else:
            feats, cls = model.encoder(x)
        losses: dict[str, Tensor] = {}
        for t in tasks:
            if weights.get(t.name, 0.0) == 0.0:
                continue
            pred = model.heads[t.name](feats, cls, x.shape[-2:])
            losses[t.name] = weights[t.name] * t.loss(pred, batch[t.target])
        logs = {f"loss/{n}": v.item() for n, v in losses.items()}
        if uncertainty is not None:
            logs.update({f"weight/{n}": w for n, w in uncertainty.weights().items()})
            return uncertainty(losses), logs
        return sum(losses.values(), torch.zeros((), device=x.device)), logs

    return loss_fn


WEIGHTINGS = ("equal", "uncertainty")


def check_weights(tasks: Sequence[Task], weights: Mapping[str, float] | None) -> dict[str, float]:
    """Loss weights per task (default 1 each), checked: known tasks, finite, ≥ 0, not all zero."""
    names = [t.name for t in tasks]
    if weights is None:
        return {n: 1.0 for n in names}
    unknown = sorted(set(weights) - set(names))
    if unknown:
        raise TrainingError(f"loss weight for {unknown[0]!r}, which is not a task of this run; "
                            f"tasks: {', '.join(names)}")
    w = {n: float(weights.get(n, 0.0)) for n in names}
    bad = [n for n, v in w.items() if not math.isfinite(v) or v < 0]
    if bad:
        raise TrainingError(f"loss weight of {bad[0]!r} is {w[bad[0]]}; weights must be finite "
                            "and >= 0")
    if not any(w.values()):
        raise TrainingError("every loss weight is 0; give at least one task a positive weight")
    return w


def finetune(model: nn.Module, tasks: Sequence[Task], train: Batch, val: Batch, cfg,
             *, seed: int, weights: Mapping[str, float] | None = None,
             weighting: str = "equal", steps: int | None = None, eval_batch_size: int = 128,
             ivon: Mapping[str, float] | None = None, partial_dir: Path | None = None,
             desc: str = "finetune", progress: bool = True) -> LoopResult:
    """Two-phase finetuning (``cfg`` is a FinetuneConfig): heads alone, then encoder + heads.

    Single-task, joint MTL (equal weights), weighted MTL (``weights``) and Kendall's uncertainty
    weighting (``weighting="uncertainty"``) share this loop and its budget conventions; ``steps``
    overrides ``cfg.steps`` for phase 2. The head phase gives every head a trained start, also those
    whose weight is 0 in a weighted run, so no head is untrained at the ends of an alpha grid.
    ``ivon`` (settings of :func:`ivon_optimizer`): phase 2 steps with IVON instead of AdamW; the
    encoder is its own param group (IVON's ``hess`` is one vector per group) and heads whose weight
    is 0 are left out (IVON would decay them), so they stay as the head phase left them.
    """
    if weighting not in WEIGHTINGS:
        raise TrainingError(one_of(weighting, WEIGHTINGS, "weighting"))
    weights = check_weights(tasks, weights)
    head_params = [p for t in tasks for p in model.heads[t.name].parameters()]
    enc_params = [p for p in model.encoder.parameters() if p.requires_grad]
    head_loss = multitask_loss(model, tasks, {t.name: 1.0 for t in tasks}, encoder_frozen=True)
    groups = [{"params": enc_params, "lr": cfg.lr}, {"params": head_params, "lr": cfg.head_lr}]
    uw = None
    if weighting == "uncertainty":
        # a submodule while training, so checkpoints (and resume) carry the log-variances
        model.loss_weights = uw = UncertaintyWeights([t.name for t in tasks])
        groups.append({"params": list(uw.parameters()), "lr": cfg.head_lr, "weight_decay": 0.0})
    full = Phase("full", cfg.steps if steps is None else steps, groups,
                 multitask_loss(model, tasks, weights, uncertainty=uw), cfg.warmup)
    if ivon is not None:
        if uw is not None:
            raise TrainingError("uncertainty weighting with IVON is not supported; use "
                                "weighting='equal' or fixed weights")
        live = [p for t in tasks if weights[t.name] > 0 for p in model.heads[t.name].parameters()]
        full.groups = [{"params": enc_params, "lr": ivon["lr"]},
                       {"params": live, "lr": ivon["head_lr"]}]
        full.optimizer = ivon_optimizer(ivon)
    phases = [Phase("head", cfg.head_steps, [{"params": head_params, "lr": cfg.head_lr}],
                    head_loss), full]
    val_sub = {k: v[:cfg.n_eval] for k, v in val.items()}

    def eval_fn() -> dict:
        return {"val": evaluate(model, tasks, val_sub, eval_batch_size)}

    try:
        return run_phases(model, phases, train, batch_size=cfg.batch_size, seed=seed,
                          weight_decay=cfg.weight_decay, grad_clip=cfg.grad_clip, eval_fn=eval_fn,
                          eval_every=cfg.eval_every, partial_dir=partial_dir,
                          ckpt_every=cfg.ckpt_every, scales=cfg.scales, desc=desc,
                          progress=progress)
    finally:
        if uw is not None:
            del model.loss_weights


IVON_KEYS = ("lr", "head_lr", "ess", "hess_init", "beta2", "weight_decay")


def ivon_optimizer(settings: Mapping[str, float]) -> Callable[[list[dict]], torch.optim.Optimizer]:
    """A factory for IVON (Shen et al., 2024), the authors' ``ivon-opt`` package, one MC sample.

    ``settings``: ``lr`` / ``head_lr`` (per group), ``ess`` (effective sample size: a large value
    tempers the posterior; only precision ratios matter to the previews), ``hess_init``, ``beta2``
    (the default 0.99999 leaves ``hess`` at its initial value over a short run) and
    ``weight_decay`` (docs/design.md: lr 2, ess 1e8, hess_init 0.1, beta2 0.99, wd 1e-4 worked).
    """
    missing = [k for k in IVON_KEYS if k not in settings]
    if missing:
        raise TrainingError(f"IVON settings lack {', '.join(missing)}; give all of "
                            f"{', '.join(IVON_KEYS)}")

    def make(groups: list[dict]) -> torch.optim.Optimizer:
        import ivon

        return ivon.IVON(groups, lr=settings["lr"], ess=settings["ess"],
                         hess_init=settings["hess_init"], beta2=settings["beta2"],
                         weight_decay=settings["weight_decay"], mc_samples=1)

    return make


# ------------------------------------------------------------------ pretraining --------------------

class SimMIM(nn.Module):
    """Masked-image modelling (Xie et al. 2022): mask patches, regress their pixels (L1).

    Wraps the encoder's timm ViT with a learned mask token and a linear per-patch decoder of
    ``channels`` values a pixel (3: RGB; :mod:`simo.foundation` decodes its dense targets with
    it); only the ViT's weights are kept afterwards.
    """

    def __init__(self, vit: nn.Module, channels: int = 3):
        super().__init__()
        self.vit = vit
        c, p = vit.embed_dim, vit.patch_embed.patch_size[0]
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c))
        nn.init.normal_(self.mask_token, std=0.02)
        self.decoder = nn.Linear(c, p * p * channels)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        v = self.vit
        tokens = v.patch_embed(x)  # (B, H', W', C) with dynamic_img_size, else (B, N, C)
        tokens = tokens.flatten(1, -2) if tokens.ndim == 4 else tokens
        tokens = torch.where(mask[..., None], self.mask_token.to(tokens.dtype), tokens)
        side = int(tokens.shape[1] ** 0.5)
        tokens = v._pos_embed(tokens.view(len(x), side, side, -1) if v.dynamic_img_size else tokens)
        tokens = v.norm(v.blocks(v.norm_pre(v.patch_drop(tokens))))
        return self.decoder(tokens[:, v.num_prefix_tokens:])

    def random_mask(self, x: Tensor, mask_ratio: float, g: torch.Generator) -> Tensor:
        """(B, N) bool: ``mask_ratio`` of each image's patches, drawn from ``g``."""
        p = self.vit.patch_embed.patch_size[0]
        b, _, h, w = x.shape
        n = (h // p) * (w // p)
        n_mask = int(round(mask_ratio * n))
        order = torch.rand(b, n, generator=g).argsort(dim=1)
        mask = torch.zeros(b, n, dtype=torch.bool)
        mask.scatter_(1, order[:, :n_mask], True)
        return mask.to(x.device)

    def loss(self, x: Tensor, mask_ratio: float, g: torch.Generator) -> Tensor:
        p = self.vit.patch_embed.patch_size[0]
        mask = self.random_mask(x, mask_ratio, g)
        pred = self(x, mask)
        target = F.unfold(x, kernel_size=p, stride=p).transpose(1, 2)  # (B, N, 3*p*p)
        return (pred - target).abs()[mask].mean()


def pretrain(vit: nn.Module, images: Tensor, cfg, *, seed: int, partial_dir: Path | None = None,
             progress: bool = True) -> LoopResult:
    """SimMIM pretraining of ``vit`` in place on ``images`` (N,3,H,W); ``cfg``: PretrainConfig."""
    torch.manual_seed(seed)
    model = SimMIM(vit).to(next(vit.parameters()).device)  # its mask token and decoder too

    def loss_fn(batch: Batch, g: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        return model.loss(batch["image"], cfg.mask_ratio, g), {}

    val = images[:256].to(next(vit.parameters()).device)

    def eval_fn() -> dict:
        with torch.no_grad():
            return {"val_loss": model.loss(val, cfg.mask_ratio, step_generator(seed, -1)).item()}

    trainable = [p for n, p in model.named_parameters()]
    phases = [Phase("pretrain", cfg.steps, [{"params": trainable, "lr": cfg.lr}], loss_fn,
                    cfg.warmup)]
    return run_phases(model, phases, {"image": images}, batch_size=cfg.batch_size, seed=seed,
                      weight_decay=cfg.weight_decay, grad_clip=1.0, eval_fn=eval_fn,
                      eval_every=max(1, cfg.steps // 20), partial_dir=partial_dir,
                      ckpt_every=max(1, cfg.steps // 8), desc="pretrain (SimMIM)",
                      progress=progress)
