"""Real datasets on tiny fixtures written in each dataset's own on-disk format (nothing downloaded).

NYUv2 and Cityscapes in the MTAN layout, a Taskonomy subset as PNG domains per building
(``real_fixtures.py``); the profile decides image size and class count; every malformed fixture is
one DataError line; the paper's zoom + crop + flip moves all targets together. (Notebook 02 on the
NYUv2 fixture runs in ``test_notebooks.py``, with the other notebook runs.)
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from real_fixtures import H, W, write_cityscapes, write_nyuv2, write_taskonomy
from simo.config import load_profile, resolve
from simo.data import make_dataset, mtan, random_zoom, real
from simo.data.real.common import seeded_part
from simo.errors import ConfigError, DataError
from simo.train import sample_batch


def profile_for(dataset: str, root: Path, **kw):
    """The tiny smoke profile (conftest) reading ``dataset`` from ``root``."""
    from conftest import tiny_profile

    return tiny_profile(**{"data.dataset": dataset, "data.data_root": str(root), **kw})


def _err(fn, *args, **kw) -> str:
    with pytest.raises(DataError) as ei:
        fn(*args, **kw)
    msg = str(ei.value)
    assert msg and "\n" not in msg, msg
    return msg


# ------------------------------------------------------------------------------- NYUv2


def test_nyuv2_splits_in_training_layout(tmp_path):
    write_nyuv2(tmp_path, n_train=4, n_val=8)
    p = profile_for("nyuv2", tmp_path)
    assert p.data.num_classes == 13  # the dataset decides
    tr, va, te = (make_dataset(p, s) for s in ("train", "val", "test"))
    assert tr["image"].shape == (4, 3, H, W) and tr["label"].shape == (4, H, W)
    assert tr["label"].dtype == torch.int64 and int(tr["label"].max()) <= 12
    assert tr["depth"].shape == (4, 1, H, W) and tr["normal"].shape == (4, 3, H, W)
    # MTAN's val (the official test images) split like the SIMO code: 400/654 val, the rest test
    assert len(va["image"]) == 5 and len(te["image"]) == 3
    raw = mtan.read_split(tmp_path / "nyuv2", "val", ["image"])["image"]
    both = torch.cat([va["image"], te["image"]]).permute(0, 2, 3, 1).numpy()
    assert sorted(map(bytes, both)) == sorted(map(bytes, raw))  # a partition of MTAN's val


def test_seeded_part_is_the_official_random_split():
    from torch.utils.data import random_split

    val, test = random_split(range(654), [400, 254], torch.Generator().manual_seed(42))
    assert seeded_part(654, (0.0, 400 / 654)) == list(val.indices)
    assert seeded_part(654, (400 / 654, 1.0)) == list(test.indices)
    tr, va = random_split(range(2975), [2380, 595], torch.Generator().manual_seed(42))
    assert seeded_part(2975, (0.0, 0.8)) == list(tr.indices)


def test_nyuv2_downscaled_to_the_profile_and_limited(tmp_path):
    write_nyuv2(tmp_path, n_train=4)
    p = profile_for("nyuv2", tmp_path, **{"data.image_size": 12, "data.n_train": 3})
    d = make_dataset(p, "train")
    assert d["image"].shape == (3, 3, 12, 16)  # short side 12, aspect kept
    full = mtan.read_split(tmp_path / "nyuv2", "train", ["label", "depth"])
    assert set(d["label"].unique().tolist()) <= set(np.unique(full["label"]).tolist())
    assert torch.all(d["depth"][:, :, 0] == 0)  # nearest: invalid rows stay invalid
    norm = d["normal"].norm(dim=1)
    assert torch.all((norm - 1).abs()[norm > 0] < 1e-5)
    pre = make_dataset(p, "pretrain")  # train images, centre-cropped square
    assert list(pre) == ["image"] and pre["image"].shape == (4, 3, 12, 12)


def test_fields_follow_the_tasks(tmp_path):
    write_nyuv2(tmp_path)
    p = profile_for("nyuv2", tmp_path, tasks=["depth", "autoencoder"])
    assert set(make_dataset(p, "train")) == {"image", "depth"}
    assert list(real.load(p, "val", fields=("normal",))) == ["normal"]
    msg = _err(make_dataset, profile_for("nyuv2", tmp_path, tasks=["edges"]), "train")
    assert "'edge'" in msg and "segmentation" in msg and "normals" in msg


def test_num_classes_must_fit_the_dataset():
    assert load_profile("smoke", {"data.dataset": "cityscapes"}).data.num_classes == 19
    assert load_profile("smoke", {"data.dataset": "cityscapes", "data.num_classes": 7}
                        ).data.num_classes == 7
    assert load_profile("smoke").data.num_classes == 6  # scenes
    with pytest.raises(ConfigError, match="does not fit nyuv2: choose one of 13"):
        load_profile("smoke", {"data.dataset": "nyuv2", "data.num_classes": 6})


# ------------------------------------------------------------------------------- errors


def _break(root: Path, what: str) -> str:
    d = root / "nyuv2"
    if what == "wrong shape":
        np.save(d / "train/depth/1.npy", np.ones((H - 4, W, 1), np.float32))
        return "shape"
    if what == "missing split":
        import shutil

        shutil.rmtree(d / "val")
        return "no nyuv2/val/image under DATA_ROOT"
    if what == "missing field":
        import shutil

        shutil.rmtree(d / "train/depth")
        return "no nyuv2/train/depth under DATA_ROOT"
    if what == "NaN depth":
        a = np.load(d / "train/depth/2.npy")
        a[5, 5] = np.nan
        np.save(d / "train/depth/2.npy", a)
        return "depth contains NaN"
    if what == "8-bit image":
        np.save(d / "train/image/0.npy", np.full((H, W, 3), 255, np.uint8))
        return "divide 8-bit images by 255"
    if what == "40 classes":
        np.save(d / "train/label/3.npy", np.full((H, W), 39, np.float32))
        return "13 classes"
    if what == "channels first":
        np.save(d / "train/image/0.npy", np.zeros((3, H, W), np.float32))
        return "H x W x 3"
    if what == "mixed sizes":
        for f, shape in (("image", (H - 4, W, 3)), ("label", (H - 4, W)),
                         ("depth", (H - 4, W, 1)), ("normal", (H - 4, W, 3))):
            np.save(d / f"train/{f}/1.npy", np.zeros(shape, np.float32))
        return "every image of a split needs one size"
    if what == "missing sample":
        (d / "train/normal/2.npy").unlink()
        return "missing 2.npy"
    raise AssertionError(what)


@pytest.mark.parametrize("what", ["wrong shape", "missing split", "missing field", "NaN depth",
                                  "8-bit image", "40 classes", "channels first",
                                  "mixed sizes", "missing sample"])
def test_malformed_nyuv2_is_one_line(tmp_path, what):
    write_nyuv2(tmp_path)
    expect = _break(tmp_path, what)
    split = "val" if what == "missing split" else "train"
    msg = _err(real.load, profile_for("nyuv2", tmp_path), split)
    assert expect in msg, msg


def test_missing_dataset_directory_says_where(tmp_path):
    msg = _err(real.load, profile_for("taskonomy", tmp_path, tasks=["depth"]), "train")
    assert "no taskonomy/ under data_root" in msg and "rgb" in msg


# ------------------------------------------------------------------------------- Cityscapes


def test_cityscapes_layout_splits_and_disparity(tmp_path):
    write_cityscapes(tmp_path, n_train=5, n_val=3)
    p = profile_for("cityscapes", tmp_path, tasks=["segmentation", "parts", "disparity"])
    assert p.data.num_classes == 19
    tr, va, te = (make_dataset(p, s) for s in ("train", "val", "test"))
    assert (len(tr["image"]), len(va["image"]), len(te["image"])) == (4, 1, 3)  # 80/20, MTAN val
    assert set(tr) == {"image", "label", "part", "disparity"}
    assert tr["part"].dtype == torch.int64 and tr["part"].shape == (4, 16, 32)
    assert int(tr["part"].max()) <= 9
    assert torch.all(tr["disparity"][:, :, 0] == 0)  # -1 (invalid) becomes 0
    assert float(tr["disparity"].min()) >= 0
    raw = mtan.read_split(tmp_path / "cityscapes", "val", ["label_19", "label_7"])
    assert torch.equal(te["label"], torch.from_numpy(raw["label_19"]).long())
    p7 = profile_for("cityscapes", tmp_path, **{"data.num_classes": 7},
                     tasks=["segmentation", "disparity"])
    assert torch.equal(make_dataset(p7, "test")["label"], torch.from_numpy(raw["label_7"]).long())


def test_cityscapes_without_parts(tmp_path):
    write_cityscapes(tmp_path, parts=False)
    ok = profile_for("cityscapes", tmp_path, tasks=["segmentation", "disparity"])
    assert set(make_dataset(ok, "train")) == {"image", "label", "disparity"}
    msg = _err(real.load, profile_for("cityscapes", tmp_path, tasks=["parts"]), "train")
    assert "no cityscapes/train/part_seg under DATA_ROOT" in msg
    msg = _err(real.load, profile_for("cityscapes", tmp_path, tasks=["depth"]), "train")
    assert "no 'depth' field" in msg and "disparity" in msg


# ------------------------------------------------------------------------------- Taskonomy


def test_taskonomy_png_encodings(tmp_path):
    write_taskonomy(tmp_path)
    tasks = ["autoencoder", "depth", "normals", "keypoints", "edges"]
    p = profile_for("taskonomy", tmp_path, tasks=tasks)
    d = make_dataset(p, "train")
    assert set(d) == {"image", "depth", "normal", "keypoint", "edge"}
    assert d["image"].shape == (2, 3, 16, 16) and float(d["image"].max()) <= 1.0
    b = tmp_path / "taskonomy/allensville"
    raw = np.asarray(Image.open(b / "depth_euclidean/point_0_view_0_domain_depth_euclidean.png"))
    assert torch.all(d["depth"][0, 0, 0] == 0)  # 65535 = no depth
    torch.testing.assert_close(d["depth"][0, 0, 1:], torch.from_numpy(raw[1:] / 512.0).float())
    norm = d["normal"].norm(dim=1)
    assert torch.all(norm[:, 0] == 0)  # normals invalid where depth is
    assert torch.all((norm[norm > 0] - 1).abs() < 1e-4)
    kp = np.asarray(Image.open(b / "keypoints2d/point_1_view_1_domain_keypoints2d.png"))
    want = torch.from_numpy(np.clip(kp / 3129, 0, 1)).float()
    torch.testing.assert_close(d["keypoint"][1, 0], want)
    assert 0 <= float(d["edge"].min()) and float(d["edge"].max()) <= 1
    assert len(make_dataset(p, "val")["image"]) == 2  # the SIMO code's val building
    small = make_dataset(profile_for("taskonomy", tmp_path, tasks=tasks,
                                     **{"data.image_size": 8, "data.n_test": 1}), "test")
    assert small["normal"].shape == (1, 3, 8, 8)


def test_taskonomy_domain_first_layout_and_splits_csv(tmp_path):
    write_taskonomy(tmp_path, domain_first=True, buildings={"a": "house1", "b": "house2"})
    p = profile_for("taskonomy", tmp_path, tasks=["depth"])
    assert "no building of the train split" in _err(real.load, p, "train")
    (tmp_path / "taskonomy/splits.csv").write_text("id,train,val,test\nhouse1,1,0,0\n"
                                                  "house2,0,1,1\n")
    assert len(make_dataset(p, "train")["depth"]) == 2
    assert len(make_dataset(p, "test")["depth"]) == 2


@pytest.mark.parametrize("what", ["8-bit depth", "missing twin", "missing domain"])
def test_malformed_taskonomy_is_one_line(tmp_path, what):
    write_taskonomy(tmp_path)
    b = tmp_path / "taskonomy/allensville"
    f = b / "depth_euclidean/point_1_view_1_domain_depth_euclidean.png"
    if what == "8-bit depth":
        Image.fromarray(np.zeros((16, 16), np.uint8)).save(f)
        expect = "16-bit single-channel PNG"
    elif what == "missing twin":
        f.unlink()
        expect = "needs its depth_euclidean twin"
    else:
        import shutil

        shutil.rmtree(b / "edge_texture")
        expect = "edge_texture domain"
    p = profile_for("taskonomy", tmp_path, tasks=["depth", "edges"])
    assert expect in _err(real.load, p, "train")


# ------------------------------------------------------------------------------- augmentation


def test_random_zoom_moves_every_target_together():
    g = torch.Generator().manual_seed(0)
    n, h, w = 6, 16, 24
    blocks = torch.randint(0, 5, (n, h // 4, w // 4), generator=g)
    label = blocks.repeat_interleave(4, 1).repeat_interleave(4, 2)  # 4 x 4 constant blocks
    batch = {"image": (label[:, None] / 10).expand(n, 3, h, w).clone(), "label": label,
             "depth": label[:, None] + 1.0, "disparity": label[:, None] + 1.0,
             "normal": torch.tensor([0.6, 0.0, 0.8]).view(1, 3, 1, 1).expand(n, 3, h, w).clone()}
    out = random_zoom(batch, (1.0, 2.0), torch.Generator().manual_seed(1))
    zoomed = [i for i in range(n) if not torch.equal(out["label"][i], label[i])]
    assert zoomed and len(zoomed) < n  # both factors drawn
    for i in range(n):
        s = 2.0 if i in zoomed else 1.0
        lab = out["label"][i].float()
        torch.testing.assert_close(out["depth"][i, 0], (lab + 1) / s)  # depth / zoom
        torch.testing.assert_close(out["disparity"][i, 0], (lab + 1) * s)  # disparity * zoom
        assert torch.equal(out["normal"][i], batch["normal"][i])
        # the image is the same window: equal to the label away from block borders
        pool = torch.nn.functional.max_pool2d
        flat = pool(lab[None], 3, 1, 1) == -pool(-lab[None], 3, 1, 1)
        torch.testing.assert_close(out["image"][i, 0][flat[0]] * 10, lab[flat[0]])
    assert out["label"].dtype == torch.int64 and out["image"].shape == batch["image"].shape


def test_sample_batch_zoom_is_optional_and_seeded():
    data = {"image": torch.rand(8, 3, 8, 8), "depth": torch.rand(8, 1, 8, 8) + 1}
    a, ia = sample_batch(data, 4, torch.Generator().manual_seed(3))
    b, ib = sample_batch(data, 4, torch.Generator().manual_seed(3), scales=(1.0,))
    assert torch.equal(ia, ib) and all(torch.equal(a[k], b[k]) for k in a)  # unchanged default
    c, _ = sample_batch(data, 4, torch.Generator().manual_seed(3), scales=(1.0, 1.5))
    d, _ = sample_batch(data, 4, torch.Generator().manual_seed(3), scales=(1.0, 1.5))
    assert all(torch.equal(c[k], d[k]) for k in c) and c["image"].shape == (4, 3, 8, 8)
    with pytest.raises(ConfigError, match="finetune.scales must be zoom factors >= 1"):
        load_profile("smoke", {"finetune.scales": [0.5, 1.0]})


# ------------------------------------------------------------------------------- profiles


def test_gpu_profiles_for_the_real_datasets():
    for name, dataset, head in (("gpu-nyuv2", "nyuv2", "linear"), ("gpu-cityscapes", "cityscapes",
                                "dpt"), ("gpu-taskonomy", "taskonomy", "dpt")):
        p = resolve(name, dataset=dataset, data_root="/data")
        assert p.model.arch == "vit_base_patch14_dinov2" and p.model.patch_size == 14
        assert p.model.feature_blocks == (2, 5, 8, 11) and p.model.use_cls  # blocks 3/6/9/12
        assert p.model.head == head and len(p.seeds) >= 3 and p.device == "auto"
        assert p.model.weights == "/data/vit_base_patch14_dinov2.lvd142m.safetensors"
        with pytest.raises(ConfigError, match=f"made for {dataset}.*-p dataset {dataset}"):
            resolve(name, dataset="scenes")  # what the notebooks pass by default
    assert load_profile("gpu").data.image_size == 224 and load_profile("gpu").model.weights is None
