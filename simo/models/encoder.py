"""A timm ViT that returns the features of chosen blocks (+ CLS), as SIMO's dense heads read them.

The paper reads blocks {3, 6, 9, 12} of DINOv2 ViT-B/14 without the final norm; the tiny profile
reads blocks {2, 4, 6} of a 6-block ViT. The encoder's ``vit`` state dict uses timm's key names,
which is what task vectors and merge methods operate on.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from simo import paths
from simo.config import ModelConfig
from simo.errors import CheckpointError, ConfigError


class Encoder(nn.Module):
    """Wraps a timm VisionTransformer; ``forward`` returns (patch feature maps, CLS tokens)."""

    def __init__(self, vit: nn.Module, feature_blocks: tuple[int, ...], use_cls: bool = True):
        super().__init__()
        self.vit = vit
        self.feature_blocks = tuple(feature_blocks)
        self.use_cls = use_cls
        # The final norm is not read by the heads (features are taken before it): freeze it so
        # that optimizers which need a gradient for every trainable parameter (IVON) do not fail.
        for p in self.vit.norm.parameters():
            p.requires_grad_(False)

    @property
    def dims(self) -> list[int]:
        return [self.vit.embed_dim] * len(self.feature_blocks)

    @property
    def patch_size(self) -> int:
        return self.vit.patch_embed.patch_size[0]

    def forward(self, x: Tensor) -> tuple[list[Tensor], list[Tensor | None]]:
        x = pad_to_patches(x, self.patch_size)
        out = self.vit.forward_intermediates(
            x, indices=list(self.feature_blocks), return_prefix_tokens=self.use_cls,
            norm=False, stop_early=True, output_fmt="NCHW", intermediates_only=True)
        if not self.use_cls:
            return list(out), [None] * len(out)
        maps, prefix = zip(*out)
        return list(maps), [p[:, 0] for p in prefix]


def pad_to_patches(x: Tensor, patch: int) -> Tensor:
    """Zero-pad H and W evenly on both sides to multiples of the patch size (as the SIMO code's
    CenterPadding): real images (NYUv2 288x384) are no multiple of DINOv2's 14 pixels, and a ViT
    would silently drop the remainder. Heads still upsample to the unpadded size."""
    h, w = x.shape[-2:]
    ph, pw = -h % patch, -w % patch
    if ph == 0 and pw == 0:
        return x
    return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))


def build_vit(cfg: ModelConfig, image_size: int) -> nn.Module:
    """Create the timm ViT named by ``cfg.arch`` with the profile's size knobs (random weights)."""
    kwargs = dict(pretrained=False, num_classes=0, img_size=image_size,
                  patch_size=cfg.patch_size, embed_dim=cfg.embed_dim, depth=cfg.depth,
                  num_heads=cfg.num_heads, dynamic_img_size=True)
    try:
        return timm.create_model(cfg.arch, **kwargs)
    except RuntimeError as e:  # unknown model name
        raise ConfigError(f"timm cannot build model.arch={cfg.arch!r}: {e}") from None


def build_encoder(cfg: ModelConfig, image_size: int, seed: int = 0) -> Encoder:
    """A randomly initialised encoder (seeded), optionally loading ``cfg.weights`` from disk."""
    torch.manual_seed(seed)
    enc = Encoder(build_vit(cfg, image_size), cfg.feature_blocks, cfg.use_cls)
    if cfg.weights:
        load_encoder_weights(enc, cfg.weights, cfg.weights_sha256)
    return enc


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _rebuild_hint(path: Path) -> str:
    """What rebuilds a weights file: the study's own release has a command, foreign ones do not."""
    if path.resolve().parent == paths.WEIGHTS.resolve():
        return "rebuild it with `make foundation` (or restore it: `git checkout weights/`)"
    return "set model.weights to a local .safetensors file"


def check_weights_file(path: str | Path, sha256: str | None = None) -> Path:
    """The weights file's path, if it exists (and matches ``sha256`` when one is given)."""
    path = paths.repo_file(path)
    if not path.is_file():
        raise CheckpointError(f"encoder weights file {path} does not exist; {_rebuild_hint(path)}")
    if sha256 is not None and file_sha256(path) != sha256:
        raise CheckpointError(f"encoder weights file {path} does not match model.weights_sha256 "
                              f"(truncated, corrupt or another release); {_rebuild_hint(path)}")
    return path


def load_encoder_weights(enc: Encoder, path: str | Path, sha256: str | None = None) -> None:
    """Load a local safetensors file of timm ViT weights, with one-line errors for every mismatch.

    ``sha256`` (the profile's ``model.weights_sha256``) is checked first, as a model hub would: a
    truncated, swapped or retrained file is refused before it is parsed.
    """
    from simo.cache import load_tensors

    path = check_weights_file(path, sha256)
    state = load_tensors(path)
    state.pop("mask_token", None)  # DINOv2 (Meta) checkpoints keep their iBOT mask token
    own = enc.vit.state_dict()
    state = {k: v for k, v in state.items() if k in own or not k.startswith("head")}
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    if missing or extra:
        raise CheckpointError(f"weights {path.name} do not match model.arch: missing "
                              f"{missing[:3]}, unexpected {extra[:3]}; check model.arch/depth/dims")
    for k, v in state.items():
        if v.shape != own[k].shape:
            if k == "pos_embed":
                v = _resample_pos_embed(v, own[k].shape)
                state[k] = v
            else:
                raise CheckpointError(f"weights {path.name}: {k} has shape {tuple(v.shape)}, model "
                                      f"expects {tuple(own[k].shape)}; check model.embed_dim/arch")
    enc.vit.load_state_dict(state)


def _resample_pos_embed(pos: Tensor, shape: torch.Size) -> Tensor:
    """Interpolate position embeddings to another grid (e.g. DINOv2's 518 px to our image size)."""
    from timm.layers import resample_abs_pos_embed

    n_prefix = pos.shape[1] - int((pos.shape[1] - 1) ** 0.5) ** 2
    side = int((shape[1] - n_prefix) ** 0.5)
    return resample_abs_pos_embed(pos, (side, side), num_prefix_tokens=n_prefix)
