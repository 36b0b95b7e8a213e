"""Dense task heads that read several encoder blocks.

``LinearHead`` follows SIMO's NYUv2 head: per-block patch features (+ the CLS token broadcast over
the grid) concatenated, an optional BatchNorm, one 1x1 conv, bilinear upsampling to the input.
``DPTHead`` is a compact DPT (Ranftl et al. 2021): reassemble blocks at four scales, fuse coarse
to fine with residual conv units; at the paper's channels (24/48/96/192, fusion 128) ≈ 3.5M params.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LinearHead(nn.Module):
    def __init__(self, dims: list[int], out_channels: int, use_cls: bool, bn: bool = False):
        super().__init__()
        self.use_cls = use_cls
        c = sum(dims) * (2 if use_cls else 1)
        self.norm = nn.BatchNorm2d(c) if bn else nn.Identity()
        self.proj = nn.Conv2d(c, out_channels, kernel_size=1)

    def forward(self, feats: list[Tensor], cls: list[Tensor | None], size: tuple[int, int]) -> Tensor:
        parts = []
        for f, c in zip(feats, cls):
            parts.append(f)
            if self.use_cls:
                parts.append(c[:, :, None, None].expand_as(f))
        x = self.proj(self.norm(torch.cat(parts, dim=1)))
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class _ResidualConvUnit(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class _Fusion(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.res1 = _ResidualConvUnit(c)
        self.res2 = _ResidualConvUnit(c)
        self.out = nn.Conv2d(c, c, 1)

    def forward(self, x: Tensor, skip: Tensor | None) -> Tensor:
        if skip is not None:
            x = x + self.res1(skip)
        x = self.res2(x)
        return self.out(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))


class DPTHead(nn.Module):
    """Reassemble -> fuse -> predict. Levels are the encoder blocks, shallow to deep."""

    def __init__(self, dims: list[int], out_channels: int, use_cls: bool,
                 channels: tuple[int, ...] = (24, 48, 96, 192), fusion: int = 128):
        super().__init__()
        n = len(dims)
        channels = tuple(channels[-n:]) if n <= len(channels) else tuple(channels) * n
        self.use_cls = use_cls
        # scale factors relative to the patch grid: shallow blocks upsampled, the deepest pooled
        scales = [2.0 ** (n - 2 - i) for i in range(n)]
        self.reassemble = nn.ModuleList()
        for d, c, s in zip(dims, channels, scales):
            resample: nn.Module
            if s > 1:
                resample = nn.ConvTranspose2d(c, c, kernel_size=int(s), stride=int(s))
            elif s < 1:
                resample = nn.Conv2d(c, c, 3, stride=int(1 / s), padding=1)
            else:
                resample = nn.Identity()
            self.reassemble.append(nn.Sequential(nn.Conv2d(d, c, 1), resample,
                                                 nn.Conv2d(c, fusion, 3, padding=1, bias=False)))
        self.fusions = nn.ModuleList(_Fusion(fusion) for _ in range(n))
        self.out = nn.Sequential(nn.Conv2d(fusion, fusion // 2, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(fusion // 2, out_channels, 1))

    def forward(self, feats: list[Tensor], cls: list[Tensor | None], size: tuple[int, int]) -> Tensor:
        levels = []
        for f, c, r in zip(feats, cls, self.reassemble):
            if self.use_cls:  # DPT's "add" readout
                f = f + c[:, :, None, None]
            levels.append(r(f))
        x = self.fusions[-1](levels[-1], None)
        for lvl, fuse in zip(reversed(levels[:-1]), reversed(self.fusions[:-1])):
            x = fuse(F.interpolate(x, size=lvl.shape[-2:], mode="bilinear", align_corners=False), lvl)
        return F.interpolate(self.out(x), size=size, mode="bilinear", align_corners=False)


def build_head(kind: str, dims: list[int], out_channels: int, use_cls: bool,
               bn: bool = False) -> nn.Module:
    if kind == "linear":
        return LinearHead(dims, out_channels, use_cls, bn)
    if kind == "dpt":
        return DPTHead(dims, out_channels, use_cls)
    from simo.errors import ConfigError, one_of

    raise ConfigError(one_of(kind, ("linear", "dpt"), "model.head"))
