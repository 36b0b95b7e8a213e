"""Encoder features (before the final norm), head shapes, seeded builds and weight loading."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from simo.cache import save_tensors
from simo.config import ModelConfig
from simo.errors import CheckpointError, ConfigError
from simo.models import build_encoder, build_head, build_model, load_encoder_weights
from simo.models.heads import DPTHead, LinearHead
from simo.tasks import get_tasks

CFG = ModelConfig(patch_size=8, embed_dim=32, depth=3, num_heads=2, feature_blocks=(0, 1))
SIZE = 32  # 4 x 4 patch grid


def _cfg(**kw) -> ModelConfig:
    return dataclasses.replace(CFG, **kw)


def _images(b: int = 2, size: int = SIZE, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _by_hand(vit, x: torch.Tensor, block: int) -> torch.Tensor:
    """Token sequence (B, prefix + N, C) after ``blocks[block]``, from timm's pieces."""
    t = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))
    for blk in vit.blocks[:block + 1]:
        t = blk(t)
    return t


def _tokens(fmap: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    """(B,C,H,W) map + (B,C) CLS -> (B, 1+HW, C) token sequence."""
    return torch.cat([cls[:, None], fmap.flatten(2).transpose(1, 2)], dim=1)


# ------------------------------------------------------------------------------- encoder


@torch.no_grad()
def test_encoder_returns_one_map_and_cls_per_block():
    enc = build_encoder(_cfg(feature_blocks=(0, 1, 2)), SIZE).eval()
    maps, cls = enc(_images(3))
    assert len(maps) == len(cls) == 3
    for m, c in zip(maps, cls):
        assert m.shape == (3, 32, SIZE // 8, SIZE // 8)
        assert c.shape == (3, 32)
    assert enc.dims == [32, 32, 32] and enc.patch_size == 8
    assert not torch.equal(maps[0], maps[1])


@torch.no_grad()
def test_encoder_without_cls():
    enc = build_encoder(_cfg(use_cls=False), SIZE).eval()
    maps, cls = enc(_images())
    assert cls == [None, None] and maps[0].shape == (2, 32, 4, 4)


@torch.no_grad()
@pytest.mark.parametrize("blocks", [(0, 1), (2,), (0, 2)])
def test_intermediates_are_block_outputs_without_final_norm(blocks):
    enc = build_encoder(_cfg(feature_blocks=blocks), SIZE, seed=1).eval()
    vit, x = enc.vit, _images()
    with torch.no_grad():  # make the final norm non-trivial, so "normed" and "raw" differ
        vit.norm.weight.uniform_(0.5, 2.0)
        vit.norm.bias.uniform_(-1.0, 1.0)
    maps, cls = enc(x)
    for b, m, c in zip(blocks, maps, cls):
        ref = _by_hand(vit, x, b)
        n = vit.num_prefix_tokens
        ref_map = ref[:, n:].transpose(1, 2).reshape(m.shape)
        torch.testing.assert_close(m, ref_map, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(c, ref[:, 0], rtol=1e-5, atol=1e-5)
        assert not torch.allclose(m, vit.norm(ref)[:, n:].transpose(1, 2).reshape(m.shape))


@torch.no_grad()
def test_last_block_plus_norm_is_forward_features():
    enc = build_encoder(_cfg(feature_blocks=(0, 2)), SIZE, seed=2).eval()
    vit, x = enc.vit, _images()
    with torch.no_grad():
        vit.norm.weight.uniform_(0.5, 2.0)
    maps, cls = enc(x)
    normed = vit.norm(_tokens(maps[-1], cls[-1]))
    torch.testing.assert_close(normed, vit.forward_features(x), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(_tokens(maps[-1], cls[-1]), vit.forward_features(x))


@torch.no_grad()
def test_encoder_accepts_other_image_sizes():
    enc = build_encoder(CFG, SIZE).eval()
    maps, _ = enc(_images(1, size=16))
    assert maps[0].shape == (1, 32, 2, 2)


def test_final_norm_is_frozen_and_the_rest_trains():
    enc = build_encoder(CFG, SIZE)
    assert all(not p.requires_grad for p in enc.vit.norm.parameters())
    others = [p for n, p in enc.named_parameters() if not n.startswith("vit.norm.")]
    assert others and all(p.requires_grad for p in others)


def test_build_encoder_is_seeded():
    a, b = build_encoder(CFG, SIZE, seed=0), build_encoder(CFG, SIZE, seed=0)
    c = build_encoder(CFG, SIZE, seed=1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["vit.blocks.0.attn.qkv.weight"], sc["vit.blocks.0.attn.qkv.weight"])


def test_unknown_arch_is_one_line_error():
    with pytest.raises(ConfigError) as ei:
        build_encoder(_cfg(arch="no_such_vit"), SIZE)
    assert "no_such_vit" in str(ei.value) and "\n" not in str(ei.value)


# ------------------------------------------------------------------------------- heads


def _feats(n: int, b: int = 2, c: int = 32, grid: int = 4):
    g = torch.Generator().manual_seed(n)
    return ([torch.randn(b, c, grid, grid, generator=g) for _ in range(n)],
            [torch.randn(b, c, generator=g) for _ in range(n)])


@pytest.mark.parametrize("kind", ["linear", "dpt"])
@pytest.mark.parametrize("n", [2, 3, 4])
@pytest.mark.parametrize("use_cls", [True, False])
def test_heads_output_at_input_size(kind, n, use_cls):
    feats, cls = _feats(n)
    if not use_cls:
        cls = [None] * n
    head = build_head(kind, [32] * n, 5, use_cls).eval()
    with torch.no_grad():
        out = head(feats, cls, (SIZE, SIZE))
        out2 = head(feats, cls, (20, 24))
    assert out.shape == (2, 5, SIZE, SIZE)
    assert out2.shape == (2, 5, 20, 24)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("kind", ["linear", "dpt"])
def test_heads_read_the_cls_token(kind):
    feats, cls = _feats(2)
    head = build_head(kind, [32, 32], 3, True).eval()
    with torch.no_grad():
        a = head(feats, cls, (16, 16))
        b = head(feats, [c + 1.0 for c in cls], (16, 16))
    assert not torch.allclose(a, b)


def test_linear_head_bn_and_channels():
    head = build_head("linear", [32, 32], 6, use_cls=True, bn=True)
    assert isinstance(head, LinearHead)
    assert isinstance(head.norm, torch.nn.BatchNorm2d) and head.norm.num_features == 128
    assert head.proj.in_channels == 128 and head.proj.out_channels == 6
    assert build_head("linear", [32, 32], 6, use_cls=False).proj.in_channels == 64


def test_dpt_head_size_matches_the_paper():
    head = build_head("dpt", [768] * 4, 1, True)
    assert isinstance(head, DPTHead)
    n = sum(p.numel() for p in head.parameters())
    assert 2.5e6 < n < 5e6, n


def test_unknown_head_kind():
    with pytest.raises(ConfigError, match="choose one of"):
        build_head("mlp", [32], 1, True)


# ------------------------------------------------------------------------------- model


def test_build_model_is_deterministic_per_seed(smoke):
    tasks = get_tasks(["segmentation", "depth", "normals"])
    a, b, c = (build_model(smoke, tasks, seed=s) for s in (0, 0, 1))
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert set(sa) == set(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)
    assert set(a.heads) == {"segmentation", "depth", "normals"}
    x = _images(2, smoke.data.image_size)
    with torch.no_grad():
        out = a.eval()(x)
        only = a(x, ["depth"])
    assert out["segmentation"].shape == (2, smoke.data.num_classes, 32, 32)
    assert out["depth"].shape == (2, 1, 32, 32) and out["normals"].shape == (2, 3, 32, 32)
    assert list(only) == ["depth"] and torch.equal(only["depth"], out["depth"])


# ------------------------------------------------------------------------------- weights


def test_load_encoder_weights_round_trip(tmp_path):
    src = build_encoder(CFG, SIZE, seed=3).eval()
    path = tmp_path / "w.safetensors"
    save_tensors(path, src.vit.state_dict())
    dst = build_encoder(CFG, SIZE, seed=4).eval()
    x = _images()
    with torch.no_grad():
        assert not torch.allclose(dst(x)[0][-1], src(x)[0][-1])
        load_encoder_weights(dst, path)
        for a, b in zip(dst(x)[0] + dst(x)[1], src(x)[0] + src(x)[1]):
            assert torch.equal(a, b)
    # the same through the profile knob
    enc = build_encoder(_cfg(weights=str(path)), SIZE, seed=9)
    assert torch.equal(enc.vit.pos_embed, src.vit.pos_embed)


def test_load_encoder_weights_ignores_a_classifier_and_resamples_positions(tmp_path):
    src = build_encoder(CFG, SIZE, seed=3)
    state = src.vit.state_dict()
    state["head.weight"] = torch.zeros(10, 32)  # a classifier the encoder does not have
    path = tmp_path / "w.safetensors"
    save_tensors(path, state)
    small = build_encoder(CFG, 16)  # 2 x 2 grid: pos_embed (1, 5, 32) vs the file's (1, 17, 32)
    load_encoder_weights(small, path)
    assert small.vit.pos_embed.shape == (1, 5, 32)
    assert torch.equal(small.vit.pos_embed[:, 0], src.vit.pos_embed[:, 0])  # CLS position kept
    assert torch.equal(small.vit.blocks[1].mlp.fc1.weight, src.vit.blocks[1].mlp.fc1.weight)


def _load_error(enc, path) -> str:
    with pytest.raises(CheckpointError) as ei:
        load_encoder_weights(enc, path)
    msg = str(ei.value)
    assert "\n" not in msg
    return msg


def test_load_encoder_weights_errors(tmp_path):
    enc = build_encoder(CFG, SIZE)
    assert "does not exist" in _load_error(enc, tmp_path / "none.safetensors")

    state = enc.vit.state_dict()
    missing = {k: v for k, v in state.items() if k != "blocks.1.attn.proj.weight"}
    save_tensors(tmp_path / "missing.safetensors", missing)
    msg = _load_error(enc, tmp_path / "missing.safetensors")
    assert "missing" in msg and "blocks.1.attn.proj.weight" in msg

    save_tensors(tmp_path / "extra.safetensors", {**state, "blocks.9.x": torch.zeros(1)})
    assert "blocks.9.x" in _load_error(enc, tmp_path / "extra.safetensors")

    wide = build_encoder(_cfg(embed_dim=48, num_heads=2), SIZE)
    save_tensors(tmp_path / "wide.safetensors", wide.vit.state_dict())
    msg = _load_error(enc, tmp_path / "wide.safetensors")
    assert "shape" in msg and "48" in msg

    deep = build_encoder(_cfg(depth=4), SIZE)
    save_tensors(tmp_path / "deep.safetensors", deep.vit.state_dict())
    assert "unexpected" in _load_error(enc, tmp_path / "deep.safetensors")

    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 7)
    assert "corrupt" in _load_error(enc, tmp_path / "bad.safetensors")


# ------------------------------------------------------------------------------- DINOv2 ViT-B/14

DINO = ModelConfig(arch="vit_base_patch14_dinov2", patch_size=14, embed_dim=768, depth=12,
                   num_heads=12, feature_blocks=(2, 5, 8, 11))  # the paper's blocks 3/6/9/12


def test_pad_to_patches_centres_the_image():
    from simo.models.encoder import pad_to_patches

    x = torch.rand(1, 2, 3, 5)
    y = pad_to_patches(x, 4)
    assert y.shape == (1, 2, 4, 8)
    assert torch.equal(y[:, :, 0:3, 1:6], x)  # 1 row below; 1 column left, 2 right
    assert y.abs().sum() == x.abs().sum()
    assert pad_to_patches(y, 4) is y


@torch.no_grad()
def test_dinov2_vitb14_features_weights_file_and_dpt_head(tmp_path):
    """One ViT-B build (random weights, nothing downloaded): block features + CLS at a size that
    is no multiple of 14, a DINOv2-style weights file (518 px positions, Meta's mask token)
    saved and loaded back, and the paper's DPT head size."""
    enc = build_encoder(DINO, 56).eval()
    vit = enc.vit
    assert 85e6 < sum(p.numel() for p in vit.parameters()) < 87e6 and enc.patch_size == 14
    x = torch.rand(1, 3, 60, 80, generator=torch.Generator().manual_seed(0))
    maps, cls = enc(x)  # padded to 70 x 84: a 5 x 6 grid
    assert [tuple(m.shape) for m in maps] == [(1, 768, 5, 6)] * 4
    assert [tuple(c.shape) for c in cls] == [(1, 768)] * 4
    head = build_head("dpt", enc.dims, 19, use_cls=True)
    assert 3.4e6 < sum(p.numel() for p in head.parameters()) < 3.7e6  # the paper's ~3.5M
    assert head(maps, cls, (60, 80)).shape == (1, 19, 60, 80)

    state = {k: v.clone() for k, v in vit.state_dict().items()}
    state["pos_embed"] = torch.randn(1, 1 + 37 * 37, 768)  # DINOv2 ships 518 px positions
    state["mask_token"] = torch.zeros(1, 768)  # Meta's checkpoints carry it; timm has none
    path = tmp_path / "dinov2.safetensors"
    save_tensors(path, state)
    for p in vit.parameters():
        p.zero_()
    load_encoder_weights(enc, path)
    assert vit.pos_embed.shape == (1, 1 + 4 * 4, 768)  # resampled to the 56 px grid
    assert torch.equal(vit.pos_embed[:, 0], state["pos_embed"][:, 0])
    own = vit.state_dict()
    assert all(torch.equal(own[k], v) for k, v in state.items()
               if k not in ("pos_embed", "mask_token"))
