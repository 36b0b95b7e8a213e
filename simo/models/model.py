"""One shared encoder and one head per task: the single-input multi-output model."""
from __future__ import annotations

import dataclasses
from typing import Sequence

import torch
from torch import Tensor, nn

from simo.config import Profile
from simo.models.encoder import Encoder, build_encoder
from simo.models.heads import build_head


class MultiTaskModel(nn.Module):
    def __init__(self, encoder: Encoder, heads: dict[str, nn.Module]):
        super().__init__()
        self.encoder = encoder
        self.heads = nn.ModuleDict(heads)

    def forward(self, x: Tensor, tasks: Sequence[str] | None = None) -> dict[str, Tensor]:
        x = x.to(next(self.parameters()).device)  # CPU images work on a CUDA model too
        feats, cls = self.encoder(x)
        size = x.shape[-2:]
        return {t: self.heads[t](feats, cls, size) for t in (tasks or self.heads.keys())}


def build_model(profile: Profile, tasks: Sequence, seed: int = 0) -> MultiTaskModel:
    """Encoder + one head per task (``tasks`` are :class:`simo.tasks.Task`), seeded random init.

    Never loads ``model.weights``: a pretrained encoder comes from :func:`simo.steps.pretrained`
    (checked and cached), so a model built here from scratch really starts from random weights.
    """
    m = dataclasses.replace(profile.model, weights=None)
    enc = build_encoder(m, profile.data.image_size, seed=seed)
    torch.manual_seed(seed + 1)
    heads = {t.name: build_head(m.head, enc.dims, t.channels, m.use_cls, m.head_bn) for t in tasks}
    return MultiTaskModel(enc, heads)
