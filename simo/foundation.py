"""The embedded foundation encoder: pretrained once on wide scenes, released in the repo.

Why: both papers finetune a *foundation model*, an encoder that already carries most of what each
task needs, so that a finetune is a small move away from it. A θ0 that finetuning rewrites (the
first study's 1000 SimMIM steps) tests neither paper. ``python -m simo foundation --profile tiny``
(``make foundation``) pretrains one at the profile's model shape and releases it the way a model
hub would: weights (safetensors) + a model card + a sha256 that the profile pins.

What each objective sees (neither sees a label of a study task, nor a task scene):

* ``simmim``: the image only. ``mask_ratio`` of the patches are replaced by a mask token and the
  encoder regresses their pixels, normalised per patch (MAE's normalized-pixel target, MSE).
* ``aux``: the image, with ``mask_ratio`` of its patches masked, and four per-pixel targets of the
  pretraining scenes that no study task predicts: albedo (surface colour before light), shading
  (ambient + Lambert term), texture id (solid / stripes / checker) and surface contours (where the
  surface id changes: creases and occlusions alike). Every patch is predicted, masked or not.

The scenes are the ``wide`` distribution of :mod:`simo.data.scenes` (more clutter, every colour
and texture scale, harder light, more camera poses than the task scenes), drawn with a seed of
their own. Only the transfer curve (a frozen linear probe, monitoring) reads task labels, of the
task train and val splits; nothing is selected by it.
"""
from __future__ import annotations

import dataclasses
import os
import platform
import subprocess
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from simo import cache, paths
from simo.config import Profile
from simo.data import make_dataset
from simo.data.scenes import AUX_FIELDS, render_scenes
from simo.models import build_model
from simo.models.encoder import build_encoder, file_sha256
from simo.tasks import get_tasks
from simo.realign import retrain_heads
from simo.train import Batch, Phase, SimMIM, evaluate, pick_device, run_phases

SCENE_SEED = 2000  # the wide pretraining scenes; the task splits use 1000-1003
VAL_SCENES = 256  # held-out wide scenes for the pretraining loss curve
AUX_TARGETS = {"albedo": 3, "shading": 1, "contour": 1, "texture": 3}  # channels decoded per pixel
CONTOUR_POS_WEIGHT = 2.0


def contours(instance: Tensor) -> Tensor:
    """(N, H, W) surface ids -> (N, 1, H, W) uint8: 1 on both sides of every id change."""
    c = torch.zeros(instance.shape, dtype=torch.bool)
    dh = instance[:, :, 1:] != instance[:, :, :-1]
    dv = instance[:, 1:, :] != instance[:, :-1, :]
    c[:, :, 1:] |= dh
    c[:, :, :-1] |= dh
    c[:, 1:, :] |= dv
    c[:, :-1, :] |= dv
    return c.to(torch.uint8).unsqueeze(1)


def pretraining_scenes(n: int, size: int, seed: int = SCENE_SEED,
                       progress: bool = True) -> dict[str, Tensor]:
    """``n`` wide scenes as (N, C, H, W) tensors: image float32; albedo, shading float16;
    contour uint8; texture int8 (N, H, W). Rendered in batches, deterministic per seed."""
    a = render_scenes(n, seed=seed, size=size, distribution="wide", progress=progress,
                      fields=("image",) + AUX_FIELDS)

    def chw(x) -> Tensor:
        t = torch.from_numpy(x)
        return t.permute(0, 3, 1, 2).contiguous() if t.ndim == 4 else t.unsqueeze(1)

    return {"image": chw(a["image"]), "albedo": chw(a["albedo"]).half(),
            "shading": chw(a["shading"]).half(), "contour": contours(torch.from_numpy(a["instance"])),
            "texture": torch.from_numpy(a["texture"])}


def _dense(pred: Tensor, size: tuple[int, int], patch: int) -> Tensor:
    """(B, N, C*p*p) per-patch predictions -> (B, C, H, W) maps (the inverse of ``F.unfold``)."""
    return F.fold(pred.transpose(1, 2), output_size=size, kernel_size=patch, stride=patch)


def objective_loss(model: SimMIM, batch: Batch, objective: str, mask_ratio: float,
                   g: torch.Generator) -> tuple[Tensor, dict[str, float]]:
    """The pretraining loss of one minibatch and its parts (floats, for the curve)."""
    x = batch["image"]
    p = model.vit.patch_embed.patch_size[0]
    mask = model.random_mask(x, mask_ratio, g)
    pred = model(x, mask)
    if objective == "simmim":
        target = F.unfold(x, kernel_size=p, stride=p).transpose(1, 2)  # (B, N, 3*p*p)
        mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        target = (target - mean) / (var + 1e-6).sqrt()
        loss = ((pred - target) ** 2).mean(-1)[mask].mean()
        return loss, {"pixels": loss.item()}
    out = _dense(pred, x.shape[-2:], p)
    albedo, shading, contour, texture = out.split(list(AUX_TARGETS.values()), dim=1)
    parts = {
        "albedo": (albedo - batch["albedo"].float()).abs().mean(),
        "shading": (shading - batch["shading"].float()).abs().mean(),
        "contour": F.binary_cross_entropy_with_logits(
            contour, batch["contour"].float(), pos_weight=torch.tensor(CONTOUR_POS_WEIGHT)),
        "texture": F.cross_entropy(texture, batch["texture"].long()),
    }
    loss = sum(parts.values())
    return loss, {k: v.item() for k, v in parts.items()}


def probe(profile: Profile, encoder: dict[str, Tensor], *, steps: int, split: str = "val",
          n_train: int | None = None, seed: int = 0) -> dict[str, dict[str, float]]:
    """A frozen linear probe: fresh linear heads trained on cached features of the task train split
    (``n_train`` images, default all), scored on ``split``. How much of each task θ0 already reads."""
    tasks = get_tasks(list(profile.tasks), num_classes=profile.data.num_classes)
    with torch.random.fork_rng():
        model = build_model(profile, tasks, seed=seed)
    model.encoder.vit.load_state_dict(encoder)
    model.to(pick_device(profile.device))
    train = make_dataset(profile, "train", limit=n_train)
    retrain_heads(model, tasks, train, steps=steps, lr=profile.realign.head_lr,
                  batch_size=profile.realign.batch_size, seed=seed,
                  eval_batch_size=profile.eval_batch_size)
    return evaluate(model, tasks, make_dataset(profile, split), profile.eval_batch_size)


def _config(profile: Profile) -> dict:
    m = profile.model
    return {"foundation": {k: v for k, v in dataclasses.asdict(profile.foundation).items()
                           if k != "out"},
            "encoder": {k: getattr(m, k) for k in ("arch", "patch_size", "embed_dim", "depth",
                                                     "num_heads")},
            "image_size": profile.data.image_size, "seed": SCENE_SEED,
            # the transfer curve's probe reads the task splits and these settings
            "probe": {"tasks": list(profile.tasks), "n_train": profile.data.n_train,
                      "n_val": profile.data.n_val, "head_lr": profile.realign.head_lr,
                      "feature_blocks": list(m.feature_blocks), "use_cls": m.use_cls}}


def pretrained_foundation(profile: Profile, progress: bool = True) -> cache.Artifact:
    """Pretrain the foundation encoder of ``profile`` (resumable, cached): tensors are the timm
    ViT state dict; meta holds the loss and transfer curves, steps, samples and wall time."""
    fd, m = profile.foundation, profile.model
    size = profile.data.image_size

    def compute(out: Path, partial: Path) -> None:
        t0 = time.perf_counter()
        data = pretraining_scenes(fd.n_scenes, size, progress=progress)
        val = pretraining_scenes(VAL_SCENES, size, seed=SCENE_SEED + 1, progress=False)
        render_s = time.perf_counter() - t0
        device = pick_device(profile.device)
        vit = build_encoder(dataclasses.replace(m, weights=None), size, seed=0).vit
        channels = 3 if fd.objective == "simmim" else sum(AUX_TARGETS.values())
        torch.manual_seed(0)
        model = SimMIM(vit, channels).to(device)
        val = {k: v.to(device) for k, v in val.items()}

        def loss_fn(batch: Batch, g: torch.Generator) -> tuple[Tensor, dict[str, float]]:
            return objective_loss(model, batch, fd.objective, fd.mask_ratio, g)

        def eval_fn() -> dict:
            with torch.no_grad():
                g = torch.Generator().manual_seed(1)
                loss, parts = objective_loss(model, val, fd.objective, fd.mask_ratio, g)
            rec = {"val_loss": loss.item(), **{f"val_{k}": v for k, v in parts.items()}}
            if fd.probe_every:  # the transfer curve, at every evaluation
                rec["probe"] = probe(profile, vit.state_dict(), steps=fd.probe_steps)
            return rec

        params = list(model.parameters())
        phase = Phase("pretrain", fd.steps, [{"params": params, "lr": fd.lr}], loss_fn, fd.warmup)
        res = run_phases(model, [phase], data, batch_size=fd.batch_size, seed=0,
                         weight_decay=fd.weight_decay, grad_clip=1.0, eval_fn=eval_fn,
                         eval_every=fd.probe_every or max(1, fd.steps // 20),
                         partial_dir=partial, ckpt_every=fd.ckpt_every,
                         desc=f"foundation ({fd.objective})", progress=progress)
        final = probe(profile, vit.state_dict(), steps=fd.probe_steps)
        cache.save_tensors(out / cache.TENSORS, vit.state_dict())
        cache.save_json(out / cache.META, {
            "history": res.history, "steps": res.steps, "samples": res.samples,
            "seconds": res.seconds, "render_seconds": render_s, "probe": final,
            "threads": torch.get_num_threads(), "device": str(device)})

    return cache.get_or_compute("foundation", _config(profile), compute)


def _git_commit() -> str:
    """The code commit the release was built from (``+dirty`` when the tree had edits)."""
    try:
        run = lambda *a: subprocess.run(["git", *a], cwd=paths.ROOT, capture_output=True,  # noqa: E731
                                        text=True, check=True).stdout.strip()
        return run("rev-parse", "HEAD") + ("+dirty" if run("status", "--porcelain", "simo") else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def release(profile: Profile, out: str | Path | None = None, progress: bool = True) -> Path:
    """Pretrain (or resume, or reuse the cached result) and write the release: ``<out>`` (the timm
    ViT state dict, safetensors), ``<out stem>.json`` (the card's data) and ``<out stem>.md``
    (the model card). Returns the weights path; the card names its sha256."""
    return write_release(profile, pretrained_foundation(profile, progress), out)


def write_release(profile: Profile, art: cache.Artifact, out: str | Path | None = None) -> Path:
    """Write the release files of a pretrained-foundation artifact (see :func:`release`)."""
    out = paths.repo_file(out or profile.foundation.out)
    # no metadata beyond the checksum: safetensors writes a header's keys in random order, and the
    # release must be the same bytes every time (the card says the rest)
    cache.save_tensors(out, art.tensors())
    meta = art.meta
    card = {
        "file": out.name, "sha256": file_sha256(out), "bytes": out.stat().st_size,
        "profile": profile.name, "objective": profile.foundation.objective,
        "config": _config(profile), "steps": meta["steps"], "samples": meta["samples"],
        "pretrain_seconds": round(meta["seconds"], 1),
        "render_seconds": round(meta["render_seconds"], 1),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "threads": meta["threads"], "device": meta["device"],
                    "torch": torch.__version__},
        "commit": _git_commit(), "history": meta["history"], "probe": meta["probe"],
    }
    cache.save_json(out.with_suffix(".json"), card)
    _plot_curves(card, out.with_name(out.stem + "-curves.png"))
    out.with_suffix(".md").write_text(model_card(card))
    return out


def _main_metrics(probe_metrics: dict[str, dict[str, float]]) -> dict[str, float]:
    tasks = get_tasks(list(probe_metrics))
    return {t.name: probe_metrics[t.name][t.metrics[0].name] for t in tasks}


def _plot_curves(card: dict, path: Path) -> None:
    """Loss and transfer curves of the release, beside its card: the loss, then one panel per
    task (each metric has its own scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    hist = card["history"]
    probes = [h for h in hist if "probe" in h]
    names = list(probes[0]["probe"]) if probes else []
    fig, axes = plt.subplots(1, 1 + len(names), figsize=(3.6 * (1 + len(names)), 3.0),
                             squeeze=False)
    ax = axes[0, 0]
    ax.plot([h["step"] for h in hist], [h["train_loss"] for h in hist], label="train")
    ax.plot([h["step"] for h in hist], [h["val_loss"] for h in hist], label="held-out scenes")
    ax.set(ylabel=f"{card['objective']} loss (lower is better)", title="pretraining loss")
    ax.legend()
    for ax, name in zip(axes[0, 1:], names):
        m = get_tasks([name])[0].metrics[0]
        ax.plot([h["step"] for h in probes], [h["probe"][name][m.name] for h in probes],
                marker="o", color="C2")
        ax.set(ylabel=f"probe {m.name} ({'higher' if m.higher_is_better else 'lower'} is better)",
               title=f"{name}: frozen linear probe (val)")
    for ax in axes[0]:
        ax.set_xlabel("pretraining step")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x / 1000:g}k"))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def model_card(card: dict) -> str:
    """The release's model card (markdown), from its data: nothing in it is typed in by hand."""
    cfg = card["config"]
    fd, enc = cfg["foundation"], cfg["encoder"]
    probe_line = ", ".join(f"{k} {v:.3f}" for k, v in _main_metrics(card["probe"]).items())
    sees = {"simmim": "the image only: masked patches' pixels, normalised per patch, are "
                      "regressed (MAE's target, MSE)",
            "aux": "the image (masked patches hidden) and four per-pixel targets of the "
                   "pretraining scenes that no study task predicts: albedo, shading (ambient + "
                   "Lambert term), texture id and surface contours"}[card["objective"]]
    return f"""# Foundation encoder `{card['file']}`

The embedded default's θ0: a timm `{enc['arch']}` ViT (patch {enc['patch_size']}, width
{enc['embed_dim']}, depth {enc['depth']}, {enc['num_heads']} heads) at {cfg['image_size']} px,
pretrained by this study on its own synthetic scenes. Rebuild: `make foundation` (profile
`{card['profile']}`); the profile pins the hash below and refuses any other file.

| | |
|---|---|
| sha256 | `{card['sha256']}` |
| size | {card['bytes']} bytes |
| objective | `{card['objective']}`: {sees} |
| data | {fd['n_scenes']} distinct scenes of the `wide` distribution (seed {cfg['seed']}), disjoint from the task scenes |
| steps | {card['steps']} at batch {fd['batch_size']} (lr {fd['lr']}, warm-up {fd['warmup']}, cosine, weight decay {fd['weight_decay']}, mask ratio {fd['mask_ratio']}); {card['samples']} distinct scenes seen |
| wall time | {card['pretrain_seconds']} s pretraining + {card['render_seconds']} s rendering |
| machine | {card['machine']['platform']}, {card['machine']['cpus']} CPUs, {card['machine']['threads']} torch threads, {card['machine']['device']}, torch {card['machine']['torch']} |
| code | commit `{card['commit']}` |
| frozen linear probe (task val split, {fd['probe_steps']} head steps) | {probe_line} |

![loss and transfer curves]({Path(card['file']).stem}-curves.png)

The transfer curve is monitoring only: a linear probe on the task train split, scored on the task
val split; no checkpoint is chosen by it. Curves and every number above are in
`{Path(card['file']).stem}.json`. What the encoder is worth for the study (probe in normalized
points, finetuning gains over scratch and over the weak SimMIM θ0 with CIs, steps to 95 %,
task-vector norms) is measured in notebook 01, section "Is θ0 a foundation model?".
"""


def card_of(profile: Profile) -> dict | None:
    """The model card data (``<weights>.json``) of the profile's released encoder, if it has one."""
    if not profile.model.weights:
        return None
    path = paths.repo_file(profile.model.weights).with_suffix(".json")
    return cache.load_json(path) if path.is_file() else None
