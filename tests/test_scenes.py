"""Tests for the synthetic scene renderer and the MTAN on-disk layout.

Why: every downstream number (depth / normal / edge metrics, merging results) trusts these
labels to be exact, so the renderer is checked against independent analytic answers, and the
loader against each way a dataset directory can be broken.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from simo.data.mtan import read_split, split_size, write_split
from simo.data.scenes import (CLASSES, DISTRIBUTIONS, FIELDS, render_scene_spec, render_scenes,
                              sample_scene_spec)
from simo.errors import DataError

SIZE = 48


def _rot(yaw: float, pitch: float) -> np.ndarray:
    """R_y(yaw) @ R_x(pitch), written out independently of the module."""
    a, b = math.radians(yaw), math.radians(pitch)
    ry = np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    return ry @ rx


def _cam_dirs(size: int, fov: float = 60.0) -> np.ndarray:
    """Camera-frame (H, W, 3) pixel-centre ray directions with z = -1 (documented convention)."""
    f = (size / 2) / math.tan(math.radians(fov) / 2)
    c = np.arange(size) + 0.5 - size / 2
    u, v = np.meshgrid(c, c)
    return np.stack([u / f, -v / f, -np.ones_like(u)], -1)


def _project(p_world, pos, R, size: int, fov: float = 60.0) -> tuple[float, float, float]:
    pc = R.T @ (np.asarray(p_world) - pos)
    f = (size / 2) / math.tan(math.radians(fov) / 2)
    z = -pc[2]
    return f * pc[0] / z + size / 2, -f * pc[1] / z + size / 2, z


def _mask_border(m: np.ndarray) -> np.ndarray:
    """Pixels whose boolean value differs from a 4-neighbour."""
    out = np.zeros_like(m)
    h = m[:, 1:] != m[:, :-1]
    v = m[1:, :] != m[:-1, :]
    out[:, 1:] |= h
    out[:, :-1] |= h
    out[1:, :] |= v
    out[:-1, :] |= v
    return out


def _rel_jump(depth: np.ndarray) -> np.ndarray:
    """Per pixel: the largest relative depth jump to a 4-neighbour (over the last two axes)."""
    j = np.zeros(depth.shape)
    for ax in (-1, -2):
        d0 = np.swapaxes(depth, ax, -1)[..., :-1]
        d1 = np.swapaxes(depth, ax, -1)[..., 1:]
        r = np.abs(d1 - d0) / np.minimum(d0, d1)
        jj = np.swapaxes(j, ax, -1)
        jj[..., :-1] = np.maximum(jj[..., :-1], r)
        jj[..., 1:] = np.maximum(jj[..., 1:], r)
    return j


@pytest.fixture(scope="module")
def task_batch() -> dict[str, np.ndarray]:
    return render_scenes(64, 0, size=SIZE, distribution="task")


# --------------------------------------------------------------------------------- analytic


def test_single_sphere_matches_analytic_depth_normals_labels():
    pos, yaw, pitch = np.array([0.0, 1.5, -5.0]), 5.0, -3.0
    R = _rot(yaw, pitch)
    fwd = R @ np.array([0.0, 0.0, -1.0])
    c, r = pos + 1.2 * fwd + np.array([0.05, 0.03, 0.0]), 0.4
    spec = {"camera": {"position": pos.tolist(), "yaw": yaw, "pitch": pitch, "fov": 60},
            "objects": [{"type": "sphere", "center": c.tolist(), "radius": r}]}
    out = render_scene_spec(spec, SIZE)

    d = _cam_dirs(SIZE) @ R.T
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    oc = pos - c
    b = d @ oc
    disc = b * b - (oc @ oc - r * r)
    mask = disc > 0
    s = -b - np.sqrt(np.where(mask, disc, 0.0))
    zdepth = s * (d @ fwd)
    p = pos + s[..., None] * d
    n_cam = ((p - c) / r) @ R  # row vectors: (R^T n)^T = n^T R

    assert mask[SIZE // 2, SIZE // 2] and mask.sum() > 100 and (~mask).sum() > 100
    np.testing.assert_array_equal(out["label"], np.where(mask, CLASSES.index("sphere"),
                                                         CLASSES.index("wall")))
    np.testing.assert_allclose(out["depth"][SIZE // 2, SIZE // 2], zdepth[SIZE // 2, SIZE // 2],
                               rtol=1e-5)
    np.testing.assert_allclose(out["depth"][mask], zdepth[mask], rtol=1e-4)
    cos = np.clip(np.sum(out["normal"][mask] * n_cam[mask], -1), -1, 1)
    assert np.degrees(np.arccos(cos)).max() < 0.5
    # the back wall (z = -7) everywhere else: normal +z in world, depth from the plane
    wall_n = R.T @ np.array([0.0, 0.0, 1.0])
    np.testing.assert_allclose(out["normal"][~mask], np.broadcast_to(wall_n, ((~mask).sum(), 3)),
                               atol=1e-5)
    t_wall = (-7.0 - pos[2]) / d[..., 2]
    np.testing.assert_allclose(out["depth"][~mask], (t_wall * (d @ fwd))[~mask], rtol=1e-5)
    # occlusion edges are exactly the silhouette (sphere at ~1.2 m against a wall at ~2 m)
    np.testing.assert_array_equal(out["edge"].astype(bool), _mask_border(mask))
    assert out["keypoint"].max() == 0.0
    assert 0.0 <= out["image"].min() and out["image"].max() <= 1.0


def test_box_keypoints_at_visible_corners_only():
    pos, yaw, pitch = np.array([0.2, 1.5, 0.0]), 4.0, -20.0
    R = _rot(yaw, pitch)
    c, he, byaw = np.array([0.0, 0.4, -3.0]), np.array([0.5, 0.4, 0.35]), 30.0
    spec = {"camera": {"position": pos.tolist(), "yaw": yaw, "pitch": pitch},
            "objects": [{"type": "box", "center": c.tolist(), "half_extents": he.tolist(),
                         "yaw": byaw}]}
    out = render_scene_spec(spec, SIZE)
    Rb = _rot(byaw, 0.0)
    # a vertex of a convex box is visible iff one of its 3 faces faces the eye
    vis, hid = [], []
    for sg in np.array(np.meshgrid([-1, 1], [-1, 1], [-1, 1])).reshape(3, -1).T:
        corner = c + Rb @ (sg * he)
        faces = [c + Rb @ (np.eye(3)[a] * sg[a] * he[a]) for a in range(3)]
        normals = [Rb @ (np.eye(3)[a] * sg[a]) for a in range(3)]
        seen = any(np.dot(pos - fc, n) > 0 for fc, n in zip(faces, normals))
        u, v, z = _project(corner, pos, R, SIZE)
        assert z > 0 and 0 <= u < SIZE and 0 <= v < SIZE
        (vis if seen else hid).append((int(math.floor(v)), int(math.floor(u))))
    assert len(vis) == 7 and len(hid) == 1
    k = out["keypoint"]
    assert k.min() >= 0.0 and k.max() <= 1.0
    for v, u in vis:
        assert k[v, u] == pytest.approx(1.0)
    for v, u in hid:
        far = min(math.hypot(v - a, u - b) for a, b in vis)
        assert far >= 3 and k[v, u] < 0.05
    assert int((k == 1.0).sum()) == len(set(vis))
    assert (out["label"] == CLASSES.index("box")).sum() > 50


def test_contact_creases_are_not_edges():
    """Objects standing on a far floor: the pixel depth step at the contact is ~10 % (grazing
    floor), yet a crease is no occlusion edge; the silhouettes against the wall are."""
    spec = {"camera": {"position": [0.0, 1.2, 0.0], "pitch": -10},
            "objects": [{"type": "box", "center": [-0.6, 0.5, -6.0],
                         "half_extents": [0.6, 0.5, 0.4]},
                        {"type": "cylinder", "base": [1.0, 0.0, -6.0], "radius": 0.5,
                         "height": 1.0}]}
    out = render_scene_spec(spec, SIZE)
    lab, d, e = out["label"], out["depth"].astype(np.float64), out["edge"].astype(bool)
    for cls in ("box", "cylinder"):
        obj, floor = lab == CLASSES.index(cls), lab == CLASSES.index("floor")
        below = np.zeros_like(obj)
        below[1:] = obj[:-1] & floor[1:]  # floor pixel right below an object pixel
        inner = below.copy()  # ... away from the object's side silhouettes
        inner[:, 1:-1] = below[:, 1:-1] & below[:, :-2] & below[:, 2:]
        inner[:, [0, -1]] = False
        above = np.roll(inner, -1, axis=0)
        assert inner.sum() >= 3
        step = np.abs(d[inner] - d[above]) / np.minimum(d[inner], d[above])
        assert step.min() > 0.05  # a pixel-level test alone would call these edges
        assert not e[inner].any() and not e[above].any()
        side = obj & ~np.roll(obj, 1, axis=1)  # left silhouette against the wall
        assert e[side].sum() >= 5


@pytest.mark.parametrize("typ", ["cylinder", "cone"])
def test_cylinder_and_cone_normals_match_geometry(typ):
    """Side normals: cylinder horizontal radial, cone tilted up by atan(r/h); caps vertical."""
    pos = np.array([0.0, 1.6, 0.0])
    R = _rot(0.0, -20.0)
    base, r, h = np.array([0.1, 0.0, -2.5]), 0.4, 0.9
    spec = {"camera": {"position": pos.tolist(), "pitch": -20.0},
            "objects": [{"type": typ, "base": base.tolist(), "radius": r, "height": h}]}
    out = render_scene_spec(spec, SIZE)
    m = out["label"] == CLASSES.index(typ)
    assert m.sum() > 50
    d = _cam_dirs(SIZE) @ R.T  # world dirs with camera-frame z = -1: point = pos + depth * d
    p = pos + out["depth"][..., None].astype(np.float64) * d
    nw = out["normal"].astype(np.float64) @ R.T  # back to world
    top = m & (np.abs(p[..., 1] - h) < 1e-4)
    side = m & ~top
    radial = p[..., [0, 2]] - base[[0, 2]]
    rho = np.linalg.norm(radial, axis=-1)
    if typ == "cylinder":
        assert top.sum() > 5
        np.testing.assert_allclose(nw[top], np.broadcast_to([0, 1, 0], (top.sum(), 3)),
                                   atol=1e-5)
        np.testing.assert_allclose(rho[side], r, rtol=1e-4)
        expect = np.concatenate([radial[side][:, :1], np.zeros((side.sum(), 1)),
                                 radial[side][:, 1:]], 1) / rho[side][:, None]
    else:
        assert top.sum() == 0
        np.testing.assert_allclose(rho[side], r * (1 - p[..., 1][side] / h), atol=1e-4)
        tilt = math.atan(r / h)
        ur = radial[side] / rho[side][:, None]
        expect = np.stack([ur[:, 0] * math.cos(tilt), np.full(side.sum(), math.sin(tilt)),
                           ur[:, 1] * math.cos(tilt)], 1)
    cos = np.clip(np.sum(nw[side] * expect, -1), -1, 1)
    assert np.degrees(np.arccos(cos)).max() < 0.5


def test_rays_that_hit_nothing_are_marked_invalid():
    """Camera outside the room looking away from it: the upper rays miss every surface."""
    out = render_scene_spec({"camera": {"position": [5.0, 1.5, 0.0], "yaw": -90, "pitch": 10}},
                            32)
    miss = out["label"] == -1
    assert miss.sum() > 50 and (~miss).sum() > 50
    assert (out["depth"][miss] == 0).all() and (out["depth"][~miss] > 0).all()
    assert (out["normal"][miss] == 0).all() and (out["image"][miss] == 0).all()
    assert (out["instance"][miss] == -1).all()
    assert out["edge"][_mask_border(miss)].all()


# ------------------------------------------------------------------------------ random batch


def test_random_batch_fields_are_consistent(task_batch):
    b = task_batch
    n = 64
    assert set(b) == set(FIELDS)
    shapes = {"image": (n, SIZE, SIZE, 3), "normal": (n, SIZE, SIZE, 3)}
    dtypes = {"label": np.int16}
    for k in FIELDS:
        assert b[k].shape == shapes.get(k, (n, SIZE, SIZE)), k
        assert b[k].dtype == dtypes.get(k, np.float32), k
    lab = b["label"]
    assert lab.min() >= 0 and lab.max() < len(CLASSES)  # the closed room: every ray hits
    assert set(np.unique(lab).tolist()) == set(range(len(CLASSES)))
    assert np.isfinite(b["depth"]).all() and (b["depth"] > 0).all()
    assert 0.0 <= b["image"].min() and b["image"].max() <= 1.0 and b["image"].std() > 0.05
    norm = np.linalg.norm(b["normal"], axis=-1)
    assert np.abs(norm - 1).max() < 1e-4
    facing = np.sum(b["normal"] * -_cam_dirs(SIZE), -1)  # dot(normal, -ray) > 0
    assert facing.min() > 0


def test_edges_only_at_depth_jumps(task_batch):
    e = task_batch["edge"]
    assert set(np.unique(e).tolist()) <= {0.0, 1.0}
    assert e.sum() > 100
    jump = _rel_jump(task_batch["depth"].astype(np.float64))
    assert (jump[e == 1] > 0.05 - 1e-6).all()
    # creases (floor/wall, wall/wall) are not occlusion edges: the empty room has none
    empty = render_scene_spec({"camera": {"position": [0, 1.5, 0], "pitch": -15}}, SIZE)
    assert empty["edge"].sum() == 0 and set(np.unique(empty["label"]).tolist()) == {0, 1}


def test_keypoints_follow_boxes(task_batch):
    k = task_batch["keypoint"]
    assert k.min() >= 0.0 and k.max() <= 1.0
    n_boxes = [sum(o["type"] == "box" for o in
                   sample_scene_spec(np.random.default_rng([0, i, 1]), "task")["objects"])
               for i in range(64)]
    n_boxes = np.array(n_boxes)
    assert (n_boxes == 0).any() and (n_boxes > 0).sum() > 10
    assert (k[n_boxes == 0] == 0).all()
    peaks = k[n_boxes > 0].reshape((n_boxes > 0).sum(), -1).max(1)
    assert (peaks == 1.0).mean() > 0.8  # a few boxes may have every corner out of view


# ------------------------------------------------------------------ determinism, distributions


def test_determinism_and_prefix_property():
    a = render_scenes(6, 3, size=24, batch=4)
    b = render_scenes(10, 3, size=24)
    c = render_scenes(6, 3, size=24, batch=256)
    d = render_scenes(6, 4, size=24)
    for k in FIELDS:
        np.testing.assert_array_equal(a[k], b[k][:6])
        np.testing.assert_array_equal(a[k], c[k])
    assert not np.array_equal(a["image"], d["image"])
    assert not np.array_equal(a["depth"], d["depth"])


def _saturation(img: np.ndarray) -> float:
    mx, mn = img.max(-1), img.min(-1)
    return float(np.mean((mx - mn) / np.maximum(mx, 1e-6)))


def test_distributions_differ_but_share_geometry():
    pre = render_scenes(32, 1, size=24, distribution="pretrain")
    task = render_scenes(32, 1, size=24, distribution="task")
    assert _saturation(pre["image"]) + 0.2 < _saturation(task["image"])
    assert pre["label"].min() >= 0 and pre["depth"].min() > 0
    counts = {d: [len(sample_scene_spec(np.random.default_rng([1, i, j]), d)["objects"])
                  for i in range(200)] for j, d in enumerate(DISTRIBUTIONS)}
    assert min(counts["task"]) >= 2 and max(counts["task"]) <= 6
    assert min(counts["pretrain"]) == 0 and max(counts["pretrain"]) > 6


def test_progress_bar_and_empty_request():
    out = render_scenes(3, 0, size=16, batch=2, progress=True)
    assert out["image"].shape == (3, 16, 16, 3)
    empty = render_scenes(0, 0, size=16)
    assert empty["depth"].shape == (0, 16, 16)


@pytest.mark.parametrize("kwargs, text", [
    ({"n": -1, "seed": 0}, "number of scenes n must be an integer >= 0"),
    ({"n": 2, "seed": 0, "distribution": "nyu"}, "choose one of: pretrain, task"),
    ({"n": 2, "seed": 0, "size": 4}, "image size must be an integer >= 8"),
    ({"n": 2, "seed": -3}, "seed must be an integer >= 0"),
])
def test_render_scenes_rejects_bad_arguments(kwargs, text):
    with pytest.raises(DataError, match=text) as e:
        render_scenes(**kwargs)
    assert "\n" not in str(e.value)


def test_render_scene_spec_rejects_bad_spec():
    with pytest.raises(DataError, match="unknown object type 'torus'; choose one of: sphere"):
        render_scene_spec({"objects": [{"type": "torus"}]}, 16)
    with pytest.raises(DataError, match="sphere needs key 'radius'"):
        render_scene_spec({"objects": [{"type": "sphere", "center": [0, 1, -3]}]}, 16)


# ------------------------------------------------------------------------------------- MTAN


def test_mtan_round_trip_and_atomic_replace(tmp_path: Path):
    arrays = render_scenes(3, 0, size=16)
    write_split(tmp_path, "train", arrays)
    assert sorted(p.name for p in (tmp_path / "train" / "depth").iterdir()) == \
        ["0.npy", "1.npy", "2.npy"]
    back = read_split(tmp_path, "train", FIELDS)
    for k in FIELDS:
        assert back[k].dtype == arrays[k].dtype
        np.testing.assert_array_equal(back[k], arrays[k])
    assert split_size(tmp_path, "train") == 3
    write_split(tmp_path, "train", {k: v[:2] for k, v in arrays.items()})  # replace whole split
    assert split_size(tmp_path, "train") == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train"]  # no temp dirs left behind


def test_mtan_accepts_nyuv2_shapes(tmp_path: Path):
    rng = np.random.default_rng(0)
    n, h, w = 2, 6, 8
    lab = rng.integers(-1, 13, (n, h, w)).astype(np.int64)
    write_split(tmp_path, "val", {"image": rng.uniform(size=(n, h, w, 3)).astype(np.float32),
                                  "label": lab, "depth": rng.uniform(1, 5, (n, h, w, 1)),
                                  "normal": rng.normal(size=(n, h, w, 3))})
    out = read_split(tmp_path, "val", ["image", "label", "depth", "normal"])
    assert out["depth"].shape == (n, h, w) and out["normal"].shape == (n, h, w, 3)
    np.testing.assert_array_equal(out["label"], lab)


def _small(tmp_path: Path, n: int = 3) -> Path:
    write_split(tmp_path, "train", {"image": np.zeros((n, 4, 4, 3), np.float32),
                                    "depth": np.ones((n, 4, 4), np.float32)})
    return tmp_path / "train"


def _raises(text: str, root: Path, split: str = "train", fields=("image", "depth")) -> str:
    with pytest.raises(DataError, match=text) as e:
        read_split(root, split, fields)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_mtan_missing_root_split_field(tmp_path: Path):
    _raises("does not exist", tmp_path / "nope")
    _small(tmp_path)
    _raises(r"no split 'val' under .* \(found: train\)", tmp_path, "val")
    msg = _raises("no nyuv2-like 'train/normal' under", tmp_path, fields=("image", "normal"))
    assert "expected MTAN layout train/normal/{i}.npy" in msg


def test_mtan_empty_and_count_mismatch(tmp_path: Path):
    d = _small(tmp_path)
    (d / "normal").mkdir()
    _raises("empty split 'train/normal'", tmp_path, fields=("normal",))
    (d / "normal").rmdir()
    (d / "depth" / "2.npy").unlink()
    _raises("'train/image' has 3 files but 'train/depth' has 2", tmp_path)
    with pytest.raises(DataError, match="'train/depth' has 2 files but 'train/image' has 3"):
        split_size(tmp_path, "train")


def test_mtan_non_contiguous_and_bad_names(tmp_path: Path):
    d = _small(tmp_path)
    (d / "depth" / "1.npy").rename(d / "depth" / "3.npy")
    _raises(r"non-contiguous indices \(missing 1.npy\)", tmp_path, fields=("depth",))
    (d / "depth" / "3.npy").rename(d / "depth" / "01.npy")
    _raises("unexpected file .*01.npy", tmp_path, fields=("depth",))


def test_mtan_shape_mismatch_corrupt_pickle_nan(tmp_path: Path):
    d = _small(tmp_path)
    np.save(d / "depth" / "1.npy", np.ones((5, 4), np.float32))
    _raises(r"1.npy has shape \(5, 4\) but .*0.npy has \(4, 4\)", tmp_path)
    (d / "depth" / "1.npy").write_bytes(b"not a numpy file at all")
    _raises("cannot read .*1.npy", tmp_path)
    np.save(d / "depth" / "1.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    _raises("cannot read .*1.npy", tmp_path)  # never unpickled
    bad = np.ones((4, 4), np.float32)
    bad[1, 2] = np.nan
    np.save(d / "depth" / "1.npy", bad)
    _raises("1.npy contains NaN", tmp_path)


def test_write_split_rejects_mismatched_counts(tmp_path: Path):
    with pytest.raises(DataError, match="different sample counts"):
        write_split(tmp_path, "train", {"image": np.zeros((2, 3)), "depth": np.zeros((3, 3))})
    assert not (tmp_path / "train").exists()
