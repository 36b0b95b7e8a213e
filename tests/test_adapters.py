"""Adapters: an exact no-op at init, only adapters (+ heads) train, and they come off cleanly."""
from __future__ import annotations

import pytest
import torch

from simo.errors import ConfigError
from simo.models import build_model
from simo.models.adapters import (AdaptedBlock, LoRALinear, add_adapters, adapter_parameters,
                                  remove_adapters)
from simo.steps import tasks_of


@pytest.fixture()
def model(smoke):
    torch.manual_seed(0)
    return build_model(smoke, tasks_of(smoke), seed=0).eval()


@pytest.mark.parametrize("where", ["block", "lora"])
def test_zero_initialised_adapters_leave_outputs_unchanged(model, where):
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        add_adapters(model.encoder.vit, rank=4, where=where)
        after = model(x)
    assert set(before) == set(after)
    for k in before:
        assert torch.equal(before[k], after[k])


@pytest.mark.parametrize("where", ["block", "lora"])
def test_only_adapters_and_heads_receive_gradients(model, where):
    params = add_adapters(model.encoder.vit, rank=4, where=where)
    assert params and all(p.requires_grad for p in params)
    out = model(torch.rand(2, 3, 32, 32))
    sum(v.square().mean() for v in out.values()).backward()
    adapter_ids = {id(p) for p in params}
    head_ids = {id(p) for p in model.heads.parameters()}
    for name, p in model.named_parameters():
        if id(p) in adapter_ids or id(p) in head_ids:
            continue
        assert p.grad is None, f"{name} got a gradient"
    # B is zero at init, so only B gets a gradient on the first step; A follows once B moves
    assert all(p.grad is not None for p in params[1::2])
    assert any(p.grad.abs().sum() > 0 for p in params[1::2])


def test_block_adapters_wrap_every_block_and_lora_every_linear(model):
    vit = model.encoder.vit
    n = len(vit.blocks)
    add_adapters(vit, rank=2, where="block")
    assert sum(isinstance(b, AdaptedBlock) for b in vit.blocks) == n
    assert len(adapter_parameters(vit)) == 2 * n
    remove_adapters(vit)
    add_adapters(vit, rank=2, where="lora")
    assert sum(isinstance(m, LoRALinear) for m in vit.modules()) == 4 * n


def test_remove_adapters_restores_the_original_state_dict(model):
    vit = model.encoder.vit
    ref = {k: v.clone() for k, v in vit.state_dict().items()}
    for where in ("block", "lora"):
        params = add_adapters(vit, rank=2, where=where)
        with torch.no_grad():
            for p in params:
                p.add_(1.0)
        remove_adapters(vit)
        sd = vit.state_dict()
        assert set(sd) == set(ref) and all(torch.equal(sd[k], ref[k]) for k in ref)


def test_trained_adapter_changes_the_features(model):
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        before = model.encoder(x)[0][-1].clone()
        for p in add_adapters(model.encoder.vit, rank=2):
            p.add_(0.1)
        after = model.encoder(x)[0][-1]
    assert not torch.allclose(before, after)


def test_bad_adapter_settings_are_one_line_errors(model):
    with pytest.raises(ConfigError, match="adapter placement"):
        add_adapters(model.encoder.vit, where="mlp")
    with pytest.raises(ConfigError, match="rank must be >= 1"):
        add_adapters(model.encoder.vit, rank=0)
    add_adapters(model.encoder.vit, rank=2)
    with pytest.raises(ConfigError, match="already has adapters"):
        add_adapters(model.encoder.vit, rank=2)
