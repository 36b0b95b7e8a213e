"""make_dataset: the training layout of every split, real-data errors, seeded subsets."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from simo.data import SPLITS, make_dataset, subset, to_tensors
from simo.errors import DataError


def _err(fn, *args, **kw) -> str:
    with pytest.raises(DataError) as ei:
        fn(*args, **kw)
    msg = str(ei.value)
    assert msg and "\n" not in msg
    return msg


@pytest.mark.parametrize("split,n", [("train", 16), ("val", 8), ("test", 8)])
def test_labelled_splits_have_the_training_layout(cache_dir, smoke, split, n):
    d = make_dataset(smoke, split)
    s = smoke.data.image_size
    assert {"image", "label", "depth", "normal"} <= set(d)
    img, lab, dep, nor = d["image"], d["label"], d["depth"], d["normal"]
    assert img.shape == (n, 3, s, s) and img.dtype == torch.float32
    assert 0.0 <= float(img.min()) and float(img.max()) <= 1.0
    assert lab.shape == (n, s, s) and lab.dtype == torch.int64
    assert int(lab.min()) >= -1 and int(lab.max()) < smoke.data.num_classes
    assert dep.shape == (n, 1, s, s) and dep.dtype == torch.float32
    assert float(dep.min()) >= 0 and float(dep.max()) > 0
    assert nor.shape == (n, 3, s, s) and nor.dtype == torch.float32
    length = nor.norm(dim=1)
    valid = length > 0.5
    assert valid.any()
    torch.testing.assert_close(length[valid], torch.ones_like(length[valid]), atol=1e-3, rtol=0)
    assert torch.all(length[~valid] == 0)  # invalid normals are zero
    for k, v in d.items():
        assert torch.isfinite(v.float()).all(), k
        assert v.is_contiguous(), k
    assert (cache_dir / "scenes").is_dir()  # rendered into the temporary cache


def test_pretrain_split_has_only_images(cache_dir, smoke):
    d = make_dataset(smoke, "pretrain")
    assert list(d) == ["image"]
    assert d["image"].shape == (16, 3, 32, 32)


def test_splits_differ_and_rendering_is_cached(cache_dir, smoke):
    a = make_dataset(smoke, "val")
    b = make_dataset(smoke, "test")
    assert not torch.equal(a["image"], b["image"])
    again = make_dataset(smoke, "val")
    assert all(torch.equal(a[k], again[k]) for k in a)
    entries = [p for p in (cache_dir / "scenes").iterdir() if not p.name.startswith(".")]
    assert len(entries) == 4  # one cache entry per split, rendered once


def test_changing_n_train_rerenders_only_train(cache_dir, make_profile):
    from simo.data import scenes_root

    base = make_profile()
    more = make_profile(**{"data.n_train": 12})
    assert scenes_root(base, "train") != scenes_root(more, "train")
    for split in ("pretrain", "val", "test"):
        assert scenes_root(base, split) == scenes_root(more, split)


def test_fields_and_limit(cache_dir, smoke):
    d = make_dataset(smoke, "train", fields=("image", "depth"), limit=5)
    assert set(d) == {"image", "depth"}
    assert d["image"].shape[0] == d["depth"].shape[0] == 5
    full = make_dataset(smoke, "train")
    assert torch.equal(d["depth"], full["depth"][:5])


def test_unknown_split_lists_splits(smoke):
    msg = _err(make_dataset, smoke, "training")
    assert "'training'" in msg and "choose one of" in msg
    for s in SPLITS:
        assert s in msg


def test_real_dataset_needs_data_root(make_profile):
    p = make_profile(**{"data.dataset": "nyuv2"})
    msg = _err(make_dataset, p, "train")
    assert "data_root" in msg and "nyuv2" in msg


def test_real_dataset_missing_under_data_root(make_profile, tmp_path):
    p = make_profile(**{"data.dataset": "nyuv2", "data.data_root": str(tmp_path)})
    msg = _err(make_dataset, p, "train")
    assert str(tmp_path / "nyuv2") in msg


def test_real_dataset_in_mtan_layout_loads(make_profile, tmp_path):
    from simo.data import mtan

    rng = np.random.default_rng(0)
    n, s = 3, 8
    arrays = {"image": rng.random((n, s, s, 3), dtype=np.float32),
              "label": rng.integers(-1, 6, (n, s, s)).astype(np.int64),
              "depth": rng.random((n, s, s, 1), dtype=np.float32),
              "normal": rng.standard_normal((n, s, s, 3)).astype(np.float32)}
    mtan.write_split(tmp_path / "nyuv2", "train", arrays)
    p = make_profile(**{"data.dataset": "nyuv2", "data.data_root": str(tmp_path)})
    d = make_dataset(p, "train")
    assert set(d) == {"image", "label", "depth", "normal"}
    assert d["image"].shape == (n, 3, s, s) and d["depth"].shape == (n, 1, s, s)
    assert d["label"].dtype == torch.int64 and d["label"].shape == (n, s, s)
    assert torch.equal(d["image"], torch.from_numpy(arrays["image"]).permute(0, 3, 1, 2))
    assert torch.equal(d["depth"][:, 0], torch.from_numpy(arrays["depth"][..., 0]))


def test_to_tensors_layout():
    out = to_tensors({"image": np.zeros((2, 4, 5, 3), np.float64),
                      "label": np.zeros((2, 4, 5), np.int32),
                      "edge": np.zeros((2, 4, 5), np.float32)})
    assert out["image"].shape == (2, 3, 4, 5) and out["image"].dtype == torch.float32
    assert out["label"].dtype == torch.int64 and out["label"].shape == (2, 4, 5)
    assert out["edge"].shape == (2, 1, 4, 5)


def test_subset_is_seeded_and_checked():
    g = torch.Generator().manual_seed(0)
    data = {"image": torch.rand(10, 3, 2, 2, generator=g), "label": torch.arange(10)}
    a, b, c = subset(data, 4, seed=1), subset(data, 4, seed=1), subset(data, 4, seed=2)
    assert torch.equal(a["label"], b["label"]) and torch.equal(a["image"], b["image"])
    assert not torch.equal(a["label"], c["label"])
    idx = a["label"]
    assert len(idx) == 4 and len(set(idx.tolist())) == 4
    assert torch.equal(idx, idx.sort().values)  # original order kept
    assert torch.equal(a["image"], data["image"][idx])  # fields stay aligned
    assert torch.equal(subset(data, 10, seed=3)["label"], torch.arange(10))
    msg = _err(subset, data, 11, seed=0)
    assert "11" in msg and "10" in msg
