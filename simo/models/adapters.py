"""Low-rank adapters for representation realignment: fix the merged features, not only the heads.

Two placements, both zero-initialised (``B = 0``) so that training starts exactly at the merged
model:

* ``"block"`` (the paper, docs/papers.md): after every transformer block, x ↦ x + B·A·x. The
  adapters see the merged encoder's token features and learn a low-rank correction of them.
* ``"lora"`` (Hu et al. 2022): W ↦ W + B·A on the attention ``qkv``/``proj`` and MLP ``fc1``/``fc2``
  linear layers of every block. The variant to compare against.

``add_adapters`` edits a timm ViT in place, freezes everything that was there and returns the new
trainable parameters; ``remove_adapters`` restores the original modules (weights untouched). PEFT
is not part of our offline environment and the code is a few lines, so it is ours.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

PLACEMENTS = ("block", "lora")
LORA_TARGETS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")


class LowRank(nn.Module):
    """x ↦ B·A·x with A (r×d_in) Kaiming-uniform and B (d_out×r) zero: an exact no-op at init."""

    def __init__(self, d_in: int, d_out: int, rank: int):
        super().__init__()
        self.A = nn.Parameter(torch.empty(rank, d_in))
        self.B = nn.Parameter(torch.zeros(d_out, rank))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))

    def forward(self, x: Tensor) -> Tensor:
        return x @ self.A.t() @ self.B.t()


class AdaptedBlock(nn.Module):
    """A transformer block followed by a residual low-rank adapter on its output tokens."""

    def __init__(self, block: nn.Module, dim: int, rank: int):
        super().__init__()
        self.block = block
        self.adapter = LowRank(dim, dim, rank)

    def forward(self, x: Tensor, **kwargs) -> Tensor:
        y = self.block(x, **kwargs)
        return y + self.adapter(y)


class LoRALinear(nn.Module):
    """A frozen linear layer plus a low-rank update of its weight (scaled by alpha / rank)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float | None = None):
        super().__init__()
        self.base = base
        self.lora = LowRank(base.in_features, base.out_features, rank)
        self.scale = (alpha if alpha is not None else rank) / rank

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + self.scale * self.lora(x)


def _get(module: nn.Module, path: str) -> nn.Module:
    for part in path.split("."):
        module = getattr(module, part)
    return module


def _set(module: nn.Module, path: str, value: nn.Module) -> None:
    *parents, last = path.split(".")
    for part in parents:
        module = getattr(module, part)
    setattr(module, last, value)


def add_adapters(vit: nn.Module, rank: int = 16, where: str = "block") -> list[nn.Parameter]:
    """Insert zero-initialised adapters into every block of a timm ViT, in place.

    Every parameter the ViT had is frozen; the returned list holds the adapters' parameters, the
    only ones of the encoder that will receive gradients.
    """
    from simo.errors import ConfigError, one_of

    if where not in PLACEMENTS:
        raise ConfigError(one_of(where, PLACEMENTS, "adapter placement"))
    if rank < 1:
        raise ConfigError(f"adapter rank must be >= 1, got {rank}")
    if any(isinstance(m, (AdaptedBlock, LoRALinear)) for m in vit.modules()):
        raise ConfigError("this ViT already has adapters; call remove_adapters first")
    for p in vit.parameters():
        p.requires_grad_(False)
    dev = next(vit.parameters()).device
    for i, block in enumerate(vit.blocks):
        if where == "block":
            vit.blocks[i] = AdaptedBlock(block, vit.embed_dim, rank).to(dev)
        else:
            for path in LORA_TARGETS:
                _set(block, path, LoRALinear(_get(block, path), rank).to(dev))
    return adapter_parameters(vit)


def adapter_parameters(vit: nn.Module) -> list[nn.Parameter]:
    """The adapters' parameters (A and B of every low-rank module), in module order."""
    return [p for m in vit.modules() if isinstance(m, LowRank) for p in m.parameters()]


def remove_adapters(vit: nn.Module) -> None:
    """Undo ``add_adapters``: put the original blocks / linear layers back (their weights as they were)."""
    for i, block in enumerate(vit.blocks):
        if isinstance(block, AdaptedBlock):
            vit.blocks[i] = block.block
        for path in LORA_TARGETS:
            try:
                m = _get(vit.blocks[i], path)
            except AttributeError:
                continue
            if isinstance(m, LoRALinear):
                _set(vit.blocks[i], path, m.base)
