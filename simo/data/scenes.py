"""Random indoor-like scenes with EXACT dense labels, from a batched numpy ray caster.

Why: the study needs many images whose depth, normals, semantics, occlusion edges and keypoints
are known exactly (no sensor noise, no annotation error), that look a bit like NYUv2 (a camera
in a room with a floor, walls and objects), and that come in two visibly different
distributions ("pretrain" vs "task") over the same world geometry. Everything is analytic:
rays are intersected with planes, spheres, boxes, vertical cylinders and vertical cones.

Conventions (shared with :func:`render_scene_spec`, so tests can recompute answers):

* World: y up, floor is the plane y = 0, back wall z = -depth, side walls x = +-half_width.
* Camera: OpenGL convention, x right, y up, looking down -z. Its orientation in the world is
  ``R = R_y(yaw) @ R_x(pitch)`` (degrees; positive yaw turns left, positive pitch looks up).
* Pixel (row v, column u) of a size x size image looks along the camera-frame direction
  ``((u + 0.5 - size/2) / f, -(v + 0.5 - size/2) / f, -1)`` with ``f = (size/2) / tan(fov/2)``.
* depth = z-depth (distance along the optical axis, like NYUv2); normals are unit vectors in
  camera coordinates that face the camera.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from simo.errors import DataError

CLASSES: tuple[str, ...] = ("floor", "wall", "sphere", "box", "cylinder", "cone")
FIELDS: tuple[str, ...] = ("image", "label", "depth", "normal", "edge", "keypoint")
DISTRIBUTIONS: tuple[str, ...] = ("pretrain", "task", "wide")
# per-pixel fields that no study task predicts: what the foundation encoder's pretraining may see
AUX_FIELDS: tuple[str, ...] = ("albedo", "shading", "texture", "instance")
OBJECT_TYPES: tuple[str, ...] = ("sphere", "box", "cylinder", "cone")
ROOM_SURFACES: tuple[str, ...] = ("floor", "back", "left", "right")
TEXTURES: tuple[str, ...] = ("solid", "stripes", "checker")
FOV_DEG = 60.0
EDGE_REL_JUMP = 0.05  # relative depth jump that makes an id change an occlusion edge
KEYPOINT_SIGMA_48 = 1.0  # Gaussian sigma in pixels at size 48 (scaled with the image size)

_A = np.ndarray
_N_ROOM = len(ROOM_SURFACES)
_EPS = 1e-9
_KP_TOL = 1e-6  # relative: a corner is visible when the first hit along its ray is the corner
_ROOM_DEFAULT = {"half_width": 3.0, "depth": 7.0}
_LIGHT_DEFAULT = {"direction": (0.3, 1.0, 0.5), "ambient": 0.35}
_GREY = {"color": (0.6, 0.6, 0.6)}

# ---------------------------------------------------------------------------------------------
# scene description -> packed arrays
# ---------------------------------------------------------------------------------------------


def _rot_y(deg: float) -> np.ndarray:
    a = math.radians(deg)
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _rot_x(deg: float) -> np.ndarray:
    a = math.radians(deg)
    c, s = math.cos(a), math.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def camera_rotation(yaw: float, pitch: float) -> np.ndarray:
    """Camera-to-world rotation ``R_y(yaw) @ R_x(pitch)`` (degrees); columns = camera axes."""
    return _rot_y(yaw) @ _rot_x(pitch)


def _vec3(v: Any, what: str) -> list[float]:
    try:
        a = [float(x) for x in v]
    except (TypeError, ValueError):
        a = []
    if len(a) != 3 or not all(map(math.isfinite, a)):
        raise DataError(f"scene spec: {what} must be 3 finite numbers, got {v!r}")
    return a


def _pos(v: Any, what: str) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        x = math.nan
    if not (x > 0 and math.isfinite(x)):
        raise DataError(f"scene spec: {what} must be a positive finite number, got {v!r}")
    return x


def _unit(v: list[float]) -> list[float]:
    n = max(math.sqrt(sum(x * x for x in v)), 1e-12)
    return [x / n for x in v]


def _material(m: dict | None) -> tuple:
    """(texture id, scale, world-space flag, color, color2, stripe axis, phase) of a material.

    Plain Python on purpose: thousands of materials are parsed per batch.
    """
    m = _GREY if m is None else m
    tex = m.get("texture", "solid")
    if tex not in TEXTURES:
        raise DataError(f"scene spec: unknown texture {tex!r}; choose one of: "
                        f"{', '.join(TEXTURES)}")
    space = m.get("space", "object")
    if space not in ("object", "world"):
        raise DataError(f"scene spec: unknown texture space {space!r}; choose one of: "
                        "object, world")
    c1 = [min(max(x, 0.0), 1.0) for x in _vec3(m.get("color", (0.6, 0.6, 0.6)), "color")]
    c2 = m.get("color2")
    c2 = [0.5 * x for x in c1] if c2 is None else [min(max(x, 0.0), 1.0)
                                                   for x in _vec3(c2, "color2")]
    axis = _unit(_vec3(m.get("axis", (1.0, 0.0, 0.0)), "material axis"))
    phase = _vec3(m.get("phase", (0.25, 0.25, 0.25)), "material phase")
    scale = _pos(m.get("scale", 2.0), "material scale")
    return TEXTURES.index(tex), scale, space == "world", c1, c2, axis, phase


def _object(o: dict) -> tuple[int, list[float]]:
    """(type id, 7 geometry params) of one object; see _hit_* for the parameter layouts."""
    typ = o.get("type")
    if typ not in OBJECT_TYPES:
        raise DataError(f"scene spec: unknown object type {typ!r}; choose one of: "
                        f"{', '.join(OBJECT_TYPES)}")
    try:
        if typ == "sphere":
            prm = _vec3(o["center"], "sphere center") + [_pos(o["radius"], "sphere radius"),
                                                         0.0, 0.0, 0.0]
        elif typ == "box":
            he = [_pos(h, "box half_extents") for h in _vec3(o["half_extents"], "box extents")]
            prm = _vec3(o["center"], "box center") + he + [math.radians(float(o.get("yaw", 0)))]
        else:
            prm = _vec3(o["base"], f"{typ} base") + [
                _pos(o["radius"], f"{typ} radius"), _pos(o["height"], f"{typ} height"), 0.0, 0.0]
    except KeyError as e:
        raise DataError(f"scene spec: {typ} needs key {e.args[0]!r} (see render_scene_spec "
                        "docstring)") from None
    return OBJECT_TYPES.index(typ), prm


def _pack(specs: Sequence[dict]) -> dict[str, Any]:
    """Turn B scene dicts into padded arrays so that rendering is vectorised over images."""
    B = len(specs)
    objs = [list(s.get("objects", [])) for s in specs]
    kmax = max((len(o) for o in objs), default=0)
    S = _N_ROOM + kmax
    pos, rot, tanh, hw, back, light, amb = [], [], [], [], [], [], []
    kind = np.full((B, S), -1, np.int64)
    kind[:, :_N_ROOM] = np.arange(_N_ROOM)
    prm_all = np.zeros((B, S, 7))
    # per-surface material rows: tex, scale, c1(3), c2(3), axis(3), phase(3), anchor(3), tyaw
    mat_all = np.zeros((B, S, 18))
    mat_all[:, :, 1] = 1.0
    by_type: list[list[tuple[int, int, int, list[float]]]] = [[] for _ in OBJECT_TYPES]
    for b, spec in enumerate(specs):
        cam = spec.get("camera", {})
        pos.append(_vec3(cam.get("position", (0.0, 1.5, 0.0)), "camera position"))
        rot.append(camera_rotation(float(cam.get("yaw", 0.0)), float(cam.get("pitch", 0.0))))
        fov = float(cam.get("fov", FOV_DEG))
        if not 1.0 <= fov <= 170.0:
            raise DataError(f"scene spec: camera fov must be in [1, 170] degrees, got {fov}")
        tanh.append(math.tan(math.radians(fov) / 2))
        room = {**_ROOM_DEFAULT, **spec.get("room", {})}
        hw.append(_pos(room["half_width"], "room half_width"))
        back.append(_pos(room["depth"], "room depth"))
        lt = {**_LIGHT_DEFAULT, **spec.get("light", {})}
        light.append(_unit(_vec3(lt["direction"], "light direction")))
        amb.append(min(max(float(lt["ambient"]), 0.0), 1.0))
        surf = spec.get("surfaces", {})
        rows = []
        for name in ROOM_SURFACES:
            tex, scale, _world, c1, c2, axis, phase = _material(surf.get(name))
            rows.append([tex, scale, *c1, *c2, *axis, *phase, 0.0, 0.0, 0.0, 0.0])
        counts = [0] * len(OBJECT_TYPES)
        for k, o in enumerate(objs[b]):
            typ, prm = _object(o)
            s = _N_ROOM + k
            kind[b, s] = _N_ROOM + typ
            prm_all[b, s] = prm
            tex, scale, world, c1, c2, axis, phase = _material(o.get("material"))
            # object-space textures move and turn with the object
            anchor = [0.0, 0.0, 0.0, 0.0] if world else prm[:3] + [prm[6]]
            rows.append([tex, scale, *c1, *c2, *axis, *phase, *anchor])
            by_type[typ].append((counts[typ], b, s, prm))
            counts[typ] += 1
        mat_all[b, :len(rows)] = rows
    pk: dict[str, Any] = {
        "B": B, "S": S, "pos": np.array(pos, float).reshape(B, 3),
        "R": np.array(rot, float).reshape(B, 3, 3), "tanh": np.array(tanh, float),
        "hw": np.array(hw, float), "back": np.array(back, float),
        "light": np.array(light, float).reshape(B, 3), "amb": np.array(amb, float),
        "kind": kind, "prm": prm_all, "mat": mat_all,
    }
    # rank groups: group j of a type holds the j-th object of that type of every image, so that
    # each image appears at most once per group and the work is proportional to the object count
    groups = []
    for typ, lst in enumerate(by_type):
        nrank = max((r for r, *_ in lst), default=-1) + 1
        for j in range(nrank):
            sel = [x for x in lst if x[0] == j]
            groups.append((typ, np.array([x[1] for x in sel], np.int64),
                           np.array([x[2] for x in sel], np.int32),
                           np.array([x[3] for x in sel], float)))
    pk["groups"] = groups
    return pk


# ---------------------------------------------------------------------------------------------
# ray / primitive intersections; each returns (t, part) with t = inf on a miss. Directions are
# not normalised (t is measured in units of the direction), the camera must be outside solids.
# ---------------------------------------------------------------------------------------------


def _hit_sphere(ox: _A, oy: _A, oz: _A, dx: _A, dy: _A, dz: _A, dxz: _A, dy2: _A,
               prm: _A) -> tuple[_A, _A | int]:
    """prm = [cx, cy, cz, r, -, -, -]; the near root c / q avoids cancellation."""
    cx, cy, cz, r = (prm[:, i:i + 1] for i in range(4))
    ocx, ocy, ocz = ox - cx, oy - cy, oz - cz
    bh = dx * ocx + dy * ocy + dz * ocz
    c = ocx * ocx + ocy * ocy + ocz * ocz - r * r
    disc = bh * bh - (dxz + dy2) * c
    q = np.sqrt(np.maximum(disc, 0.0)) - bh  # > 0, no cancellation: near root = c / q
    ok = (disc >= 0) & (bh < 0) & (c > 0)
    return np.where(ok, c / np.where(ok, q, 1.0), np.inf), 0


def _hit_box(ox: _A, oy: _A, oz: _A, dx: _A, dy: _A, dz: _A, dxz: _A, dy2: _A,
            prm: _A) -> tuple[_A, _A | int]:
    """prm = [cx, cy, cz, hx, hy, hz, yaw]: slabs in the box frame; part = face axis."""
    cx, cy, cz, hx, hy, hz, yaw = (prm[:, i:i + 1] for i in range(7))
    cs, sn = np.cos(yaw), np.sin(yaw)
    ocx, ocy, ocz = ox - cx, oy - cy, oz - cz
    lox, loz = cs * ocx - sn * ocz, sn * ocx + cs * ocz
    ldx, ldz = cs * dx - sn * dz, sn * dx + cs * dz
    tmins, tmaxs = [], []
    for lo, ld, h in ((lox, ldx, hx), (ocy, dy, hy), (loz, ldz, hz)):
        inv = 1.0 / ld
        a, b = (-h - lo) * inv, (h - lo) * inv
        tmins.append(np.minimum(a, b))
        tmaxs.append(np.maximum(a, b))
    tx, ty, tz = tmins
    tnear = np.maximum(np.maximum(tx, ty), tz)
    tfar = np.minimum(np.minimum(tmaxs[0], tmaxs[1]), tmaxs[2])
    part = np.where((tx >= ty) & (tx >= tz), 0, np.where(ty >= tz, 1, 2)).astype(np.int8)
    ok = (tnear <= tfar) & (tnear > _EPS)
    return np.where(ok, tnear, np.inf), part


def _cap(t: _A, part: _A, ox: _A, oy: _A, oz: _A, dx: _A, dy: _A, dz: _A, bx: _A, bz: _A,
         r: _A, yc: _A, pid: int, need: _A) -> tuple[_A, _A]:
    """Disc at height yc (radius r around (bx, bz)); only where the camera sees its outside."""
    if not np.any(need):
        return t, part
    tc = (yc - oy) / dy
    px, pz = ox - bx + tc * dx, oz - bz + tc * dz
    ok = need & (tc > _EPS) & (px * px + pz * pz <= r * r) & (tc < t)
    return np.where(ok, tc, t), np.where(ok, np.int8(pid), part)


def _hit_cylinder(ox: _A, oy: _A, oz: _A, dx: _A, dy: _A, dz: _A, dxz: _A, dy2: _A,
                 prm: _A) -> tuple[_A, _A | int]:
    """prm = [bx, by, bz, r, h, -, -] (base centre); part 0 side, 1 top, 2 bottom."""
    bx, by, bz, r, h = (prm[:, i:i + 1] for i in range(5))
    ocx, ocz = ox - bx, oz - bz
    bh = dx * ocx + dz * ocz
    c = ocx * ocx + ocz * ocz - r * r
    disc = bh * bh - dxz * c
    q = np.sqrt(np.maximum(disc, 0.0)) - bh
    ok = (disc >= 0) & (bh < 0) & (c > 0)
    ts = c / np.where(ok, q, 1.0)
    ys = oy + ts * dy
    ok &= (ys >= by) & (ys <= by + h)
    t = np.where(ok, ts, np.inf)
    part = np.zeros(t.shape, np.int8)
    t, part = _cap(t, part, ox, oy, oz, dx, dy, dz, bx, bz, r, by + h, 1, oy > by + h)
    t, part = _cap(t, part, ox, oy, oz, dx, dy, dz, bx, bz, r, by, 2, oy < by)
    return t, part


def _hit_cone(ox: _A, oy: _A, oz: _A, dx: _A, dy: _A, dz: _A, dxz: _A, dy2: _A,
             prm: _A) -> tuple[_A, _A | int]:
    """prm = [bx, by, bz, r, h, -, -] (base centre, apex up); part 0 side, 1 base."""
    bx, by, bz, r, h = (prm[:, i:i + 1] for i in range(5))
    k2 = (r / h) ** 2
    ocx, ocz = ox - bx, oz - bz
    w0 = by + h - oy  # height of the apex above the ray origin
    a = dxz - k2 * dy2
    bh = dx * ocx + dz * ocz + k2 * w0 * dy
    c = ocx * ocx + ocz * ocz - k2 * w0 * w0
    disc = bh * bh - a * c
    sq = np.sqrt(np.maximum(disc, 0.0))
    q = -(bh + np.where(bh >= 0, sq, -sq))  # stable pair of roots: q / a and c / q
    t = np.full(np.broadcast(dx, q).shape, np.inf)
    for root in (q / a, c / q):
        w = w0 - root * dy
        ok = (disc >= 0) & (root > _EPS) & (w >= 0) & (w <= h) & (root < t)
        t = np.where(ok, root, t)
    part = np.zeros(t.shape, np.int8)
    return _cap(t, part, ox, oy, oz, dx, dy, dz, bx, bz, r, by, 1, oy < by)


_HITS = (_hit_sphere, _hit_box, _hit_cylinder, _hit_cone)


def _cast(pk: dict, o: _A, dx: _A, dy: _A, dz: _A) -> tuple[_A, _A, _A]:
    """First hit of rays o + t*d (o: (B,3); d: (B,P) each) -> (t, surface id, part)."""
    B, P = dx.shape
    ox, oy, oz = (o[:, i:i + 1] for i in range(3))
    t = np.full((B, P), np.inf)
    sid = np.full((B, P), -1, np.int32)
    part = np.zeros((B, P), np.int8)
    hw, back = pk["hw"][:, None], pk["back"][:, None]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        planes = (((0.0 - oy) / dy, dy < 0), ((-back - oz) / dz, dz < 0),
                  ((-hw - ox) / dx, dx < 0), ((hw - ox) / dx, dx > 0))
        for s, (tp, ok) in enumerate(planes):
            closer = ok & (tp > _EPS) & (tp < t)
            t = np.where(closer, tp, t)
            sid[closer] = s
        dxz, dy2 = dx * dx + dz * dz, dy * dy
        for typ, rows, sids, prm in pk["groups"]:
            full = rows.size == B  # every image has this object slot: use views, not copies
            ix = slice(None) if full else rows
            tt, pp = _HITS[typ](ox[ix], oy[ix], oz[ix], dx[ix], dy[ix], dz[ix], dxz[ix],
                                dy2[ix], prm)
            cur = t[ix]
            closer = tt < cur
            t[ix] = np.where(closer, tt, cur)
            sid[ix] = np.where(closer, sids[:, None], sid[ix])
            part[ix] = np.where(closer, pp, part[ix])
    return t, sid, part


# ---------------------------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------------------------


def _normals_world(kind: _A, prm: _A, part: _A, px: _A, py: _A, pz: _A) -> _A:
    """Outward unit normals at hit points (1-D arrays over hit pixels)."""
    n = np.zeros((px.size, 3))
    n[kind == 0] = (0.0, 1.0, 0.0)
    n[kind == 1] = (0.0, 0.0, 1.0)
    n[kind == 2] = (1.0, 0.0, 0.0)
    n[kind == 3] = (-1.0, 0.0, 0.0)
    m = kind == _N_ROOM + 0  # sphere
    if m.any():
        n[m] = np.stack([px[m], py[m], pz[m]], 1) - prm[m, :3]
    m = kind == _N_ROOM + 1  # box: the face axis is the part, its sign the local coordinate
    if m.any():
        p, pa = prm[m], part[m]
        cs, sn = np.cos(p[:, 6]), np.sin(p[:, 6])
        qx, qy, qz = px[m] - p[:, 0], py[m] - p[:, 1], pz[m] - p[:, 2]
        lx, lz = cs * qx - sn * qz, sn * qx + cs * qz
        sg = np.sign(np.choose(pa, [lx, qy, lz]))
        sg[sg == 0] = 1.0
        nb = np.zeros((p.shape[0], 3))
        nb[pa == 0] = np.stack([cs, np.zeros_like(cs), -sn], 1)[pa == 0]
        nb[pa == 1] = (0.0, 1.0, 0.0)
        nb[pa == 2] = np.stack([sn, np.zeros_like(cs), cs], 1)[pa == 2]
        n[m] = nb * sg[:, None]
    m = kind == _N_ROOM + 2  # cylinder: side / top / bottom
    if m.any():
        p, pa = prm[m], part[m]
        nc = np.stack([px[m] - p[:, 0], np.zeros(p.shape[0]), pz[m] - p[:, 2]], 1)
        nc[pa == 1] = (0.0, 1.0, 0.0)
        nc[pa == 2] = (0.0, -1.0, 0.0)
        n[m] = nc
    m = kind == _N_ROOM + 3  # cone: gradient of x'^2 + z'^2 - k^2 (apex_y - y)^2 / base
    if m.any():
        p, pa = prm[m], part[m]
        k2 = (p[:, 3] / p[:, 4]) ** 2
        nc = np.stack([px[m] - p[:, 0], k2 * (p[:, 1] + p[:, 4] - py[m]), pz[m] - p[:, 2]], 1)
        nc[pa == 1] = (0.0, -1.0, 0.0)
        n[m] = nc
    norm = np.linalg.norm(n, axis=1, keepdims=True)
    n[norm[:, 0] == 0] = (0.0, 1.0, 0.0)  # a ray exactly through a cone apex
    return n / np.maximum(norm, 1e-300)


def _edges(pk: dict, sid: np.ndarray, depth: np.ndarray, dirs: tuple, size: int) -> np.ndarray:
    """Occlusion edges (B, P): pixels whose 4-neighbour has another surface id AND a depth jump.

    A jump between pixel centres can also be a crease seen at a grazing angle (the floor meets
    the back wall or a box at ~7 m, where the floor depth changes by ~15 % per pixel at 48 px).
    So each candidate pair is re-cast along m sub-pixel rays between the two pixel centres and
    kept only if a jump > EDGE_REL_JUMP remains between consecutive samples on different
    surfaces: a real discontinuity survives refinement, a crease shrinks with the step. Two room
    surfaces never occlude each other (the room is convex), so those pairs are skipped.
    """
    B, P = sid.shape
    sid2, dep2 = sid.reshape(B, size, size), depth.reshape(B, size, size)
    pix = np.arange(P).reshape(size, size)
    bs, ps, qs = [], [], []
    for a, c in ((np.s_[:, :-1], np.s_[:, 1:]), (np.s_[:-1, :], np.s_[1:, :])):
        s0, s1, d0, d1 = sid2[:, a[0], a[1]], sid2[:, c[0], c[1]], dep2[:, a[0], a[1]], dep2[
            :, c[0], c[1]]
        cand = (s0 != s1) & (np.abs(d1 - d0) > EDGE_REL_JUMP * np.minimum(d0, d1))
        cand &= (s0 >= _N_ROOM) | (s1 >= _N_ROOM) | (s0 < 0) | (s1 < 0)
        bb, vv, uu = np.nonzero(cand)
        bs.append(bb)
        ps.append(pix[a][vv, uu])
        qs.append(pix[c][vv, uu])
    order = np.argsort(np.concatenate(bs), kind="stable")
    b, p, q = (np.concatenate(x)[order] for x in (bs, ps, qs))
    # a ray that hits nothing next to one that hits is always an edge; others are refined
    ok = (sid[b, p] < 0) | (sid[b, q] < 0)
    r = np.flatnonzero(~ok)
    if r.size:
        br, pr, qr = b[r], p[r], q[r]
        m = max(4, math.ceil(400 / size))  # sub-steps per pixel step (~0.15 deg at 60 deg fov)
        s = np.linspace(0.0, 1.0, m + 1)[1:-1]  # the end points are the pixel rays themselves
        counts = np.bincount(br, minlength=B)
        C = int(counts.max())
        rank = np.arange(br.size) - (np.cumsum(counts) - counts)[br]  # br is sorted
        rays = []
        for d in dirs:
            ray = np.broadcast_to(d[:, :1, None], (B, C, m - 1)).copy()  # padding: a valid ray
            ray[br, rank] = d[br, pr][:, None] * (1 - s) + d[br, qr][:, None] * s
            rays.append(ray.reshape(B, -1))
        t, ss, _ = _cast(pk, pk["pos"], *rays)
        t = np.concatenate([depth[br, pr][:, None], t.reshape(B, C, m - 1)[br, rank],
                            depth[br, qr][:, None]], 1)
        ss = np.concatenate([sid[br, pr][:, None], ss.reshape(B, C, m - 1)[br, rank],
                             sid[br, qr][:, None]], 1)
        with np.errstate(invalid="ignore"):
            jump = np.abs(t[:, 1:] - t[:, :-1]) > EDGE_REL_JUMP * np.minimum(t[:, 1:], t[:, :-1])
        ok[r] = (jump & (ss[:, 1:] != ss[:, :-1])).any(1)
    e = np.zeros((B, P), bool)
    e[b[ok], p[ok]] = True
    e[b[ok], q[ok]] = True
    return e


def _keypoints(pk: dict, size: int, f: np.ndarray) -> np.ndarray:
    """Gaussian heatmap at the projections of visible box corners (exact visibility test)."""
    B = pk["B"]
    heat = np.zeros((B, size, size), np.float32)
    boxes = [(rows, prm) for typ, rows, _s, prm in pk["groups"] if typ == 1]
    if not boxes:
        return heat
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], float)
    cw = np.zeros((B, 8 * len(boxes), 3))
    have = np.zeros((B, 8 * len(boxes)), bool)
    for j, (rows, prm) in enumerate(boxes):
        cs, sn = np.cos(prm[:, 6]), np.sin(prm[:, 6])
        loc = signs[None] * prm[:, None, 3:6]  # (n, 8, 3) local corner offsets
        wx = cs[:, None] * loc[..., 0] + sn[:, None] * loc[..., 2]
        wz = -sn[:, None] * loc[..., 0] + cs[:, None] * loc[..., 2]
        cw[rows, 8 * j:8 * j + 8] = np.stack([wx, loc[..., 1], wz], -1) + prm[:, None, :3]
        have[rows, 8 * j:8 * j + 8] = True
    o = pk["pos"]
    d = cw - o[:, None]  # ray to each corner reaches it at t = 1
    d[~have] = (0.0, 0.0, -1.0)
    t, _, _ = _cast(pk, o, d[..., 0], d[..., 1], d[..., 2])
    pc = np.einsum("bji,bkj->bki", pk["R"], d)  # corners in camera coordinates
    z = -pc[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = f[:, None] * pc[..., 0] / z + size / 2
        v = -f[:, None] * pc[..., 1] / z + size / 2
    vis = have & (z > 0) & (u >= 0) & (u < size) & (v >= 0) & (v < size) & (t >= 1 - _KP_TOL)
    b, k = np.nonzero(vis)
    if b.size == 0:
        return heat
    iu, iv = np.floor(u[b, k]).astype(np.int64), np.floor(v[b, k]).astype(np.int64)
    sigma = KEYPOINT_SIGMA_48 * size / 48
    rad = int(math.ceil(3 * sigma))
    oy, ox = np.mgrid[-rad:rad + 1, -rad:rad + 1]
    g = np.exp(-(ox * ox + oy * oy) / (2 * sigma * sigma)).ravel().astype(np.float32)
    yy, xx = iv[:, None] + oy.ravel(), iu[:, None] + ox.ravel()
    bb = np.broadcast_to(b[:, None], yy.shape)
    gg = np.broadcast_to(g, yy.shape)
    ok = (yy >= 0) & (yy < size) & (xx >= 0) & (xx < size)
    np.maximum.at(heat, (bb[ok], yy[ok], xx[ok]), gg[ok])
    return heat


def _render_packed(pk: dict, size: int, fields: Sequence[str] = FIELDS
                   ) -> dict[str, np.ndarray]:
    """Render packed scenes: all images of the batch at once, float64 inside. The costly fields
    (edges, keypoints) are computed only when ``fields`` asks for them."""
    B, S, P = pk["B"], pk["S"], size * size
    f = (size / 2) / pk["tanh"]
    c = np.arange(size) + 0.5 - size / 2
    cu = np.broadcast_to(c[None, :], (size, size)).ravel()
    cv = np.broadcast_to(c[:, None], (size, size)).ravel()
    xc, yc = cu[None] / f[:, None], -cv[None] / f[:, None]  # camera-frame dirs with z = -1
    R, o = pk["R"], pk["pos"]
    dx = R[:, 0, 0:1] * xc + R[:, 0, 1:2] * yc - R[:, 0, 2:3]
    dy = R[:, 1, 0:1] * xc + R[:, 1, 1:2] * yc - R[:, 1, 2:3]
    dz = R[:, 2, 0:1] * xc + R[:, 2, 1:2] * yc - R[:, 2, 2:3]
    t, sid, part = _cast(pk, o, dx, dy, dz)
    valid = np.isfinite(t)
    depth = np.where(valid, t, 0.0)  # z-depth equals t because the camera-frame dir has z = -1
    sid = np.where(valid, sid, -1)

    # per-pixel work on the hit pixels only (all of them in a closed room: no copies then)
    allv = bool(valid.all())
    sel = slice(None) if allv else np.flatnonzero(valid)

    def flat(x: np.ndarray) -> np.ndarray:
        return x.reshape(B * P, *x.shape[2:])[sel]

    def grid(x: np.ndarray) -> np.ndarray:
        if allv:
            return x.reshape(B, P, *x.shape[1:])
        out = np.zeros((B * P,) + x.shape[1:], x.dtype)
        out[sel] = x
        return out.reshape(B, P, *x.shape[1:])

    px, py, pz = (flat(o[:, i:i + 1] + depth * d) for i, d in enumerate((dx, dy, dz)))
    g = flat(np.arange(B)[:, None] * S + sid)
    kind = pk["kind"].reshape(-1)[g]
    n = _normals_world(kind, pk["prm"].reshape(-1, 7)[g], flat(part), px, py, pz)
    nw = grid(n)
    nw *= np.where(nw[..., 0] * dx + nw[..., 1] * dy + nw[..., 2] * dz > 0, -1.0, 1.0)[..., None]

    # texture: coordinates in world or object space (anchor / yaw are zero for world space)
    mat = pk["mat"].reshape(-1, 18)

    def col(j: int) -> np.ndarray:
        return mat[:, j][g]

    qx, qy, qz = px - col(14), py - col(15), pz - col(16)
    ty = col(17)
    cs, sn = np.cos(ty), np.sin(ty)
    scale = col(1)
    q0 = (cs * qx - sn * qz) * scale + col(11)
    q1 = qy * scale + col(12)
    q2 = (sn * qx + cs * qz) * scale + col(13)
    tex = col(0)
    stripes = np.mod(q0 * col(8) + q1 * col(9) + q2 * col(10), 1.0) >= 0.5
    checker = np.mod(np.floor(q0) + np.floor(q1) + np.floor(q2), 2.0) >= 0.5
    mix = np.where(tex == 1, stripes, (tex == 2) & checker)
    albedo = np.stack([np.where(mix, col(5 + i), col(2 + i)) for i in range(3)], 1)
    amb = pk["amb"][:, None, None]
    L = pk["light"][:, None, :]
    lam = np.maximum(nw[..., 0] * L[..., 0] + nw[..., 1] * L[..., 1] + nw[..., 2] * L[..., 2],
                     0.0)[..., None]
    shading = amb + (1 - amb) * lam
    albedo = grid(albedo)
    image = np.clip(albedo * shading, 0.0, 1.0).astype(np.float32)
    normal = np.empty((B, P, 3), np.float32)  # world -> camera: R^T n
    for i in range(3):
        normal[..., i] = (R[:, 0, i:i + 1] * nw[..., 0] + R[:, 1, i:i + 1] * nw[..., 1]
                          + R[:, 2, i:i + 1] * nw[..., 2])
    cls = np.where(pk["kind"] < _N_ROOM, np.minimum(pk["kind"], 1), pk["kind"] - _N_ROOM + 2)
    cls = np.concatenate([cls, np.full((B, 1), -1)], 1)  # id -1 (no hit) -> label -1
    label = np.take_along_axis(cls, np.where(sid < 0, S, sid), 1).astype(np.int16)
    shp = (B, size, size)
    return {
        "image": image.reshape(shp + (3,)),
        "label": label.reshape(shp),
        "depth": depth.reshape(shp).astype(np.float32),
        "normal": normal.reshape(shp + (3,)),
        "edge": (_edges(pk, sid, depth, (dx, dy, dz), size).reshape(shp).astype(np.float32)
                 if "edge" in fields else None),
        "keypoint": _keypoints(pk, size, f) if "keypoint" in fields else None,
        "instance": sid.reshape(shp).astype(np.int16),
        "albedo": albedo.reshape(shp + (3,)).astype(np.float32),
        "shading": shading.reshape(shp).astype(np.float32),
        "texture": grid(tex).reshape(shp).astype(np.int8),
    }


def render_scene_spec(spec: dict, size: int = 48) -> dict[str, np.ndarray]:
    """Render ONE explicitly described scene; exists so tests can compare with analytic answers.

    Returns the :data:`FIELDS` arrays without the batch dim, plus ``instance`` (H, W) int16:
    the surface id per pixel (0 floor, 1 back wall, 2 left wall, 3 right wall, 4 + k = object k,
    -1 = no hit). Spec format (lengths in metres, angles in degrees; every key but ``objects``
    is optional)::

        {"camera": {"position": [x, y, z], "yaw": 0, "pitch": 0, "fov": 60},
         "room": {"half_width": 3.0, "depth": 7.0},    # walls x = +-3, back wall z = -7
         "light": {"direction": [x, y, z], "ambient": 0.35},   # direction points to the light
         "surfaces": {"floor": MAT, "back": MAT, "left": MAT, "right": MAT},
         "objects": [
            {"type": "sphere", "center": [x, y, z], "radius": r, "material": MAT},
            {"type": "box", "center": [x, y, z], "half_extents": [hx, hy, hz], "yaw": a},
            {"type": "cylinder", "base": [x, y, z], "radius": r, "height": h},  # vertical, capped
            {"type": "cone", "base": [x, y, z], "radius": r, "height": h},  # apex up, base cap
         ]}
        MAT = {"color": [r, g, b], "color2": [r, g, b], "texture": "solid|stripes|checker",
               "scale": cycles per metre, "space": "object|world", "axis": [x, y, z] (stripes),
               "phase": [x, y, z] (texture offset in cycles)}

    The box yaw turns it about the vertical axis (``R_y(yaw)``, as for the camera). The camera
    must be outside every object. See the module docstring for camera and pixel conventions.
    """
    _check_size(size)
    if not isinstance(spec, dict):
        raise DataError(f"scene spec must be a dict (see render_scene_spec), got "
                        f"{type(spec).__name__}")
    out = _render_packed(_pack([spec]), size)
    return {k: v[0] for k, v in out.items()}


# ---------------------------------------------------------------------------------------------
# random scenes
# ---------------------------------------------------------------------------------------------

# distribution-specific knobs; the world geometry (room, camera, object placement) is shared
_DIST = {
    "pretrain": {"count": (0, 8), "types": (0.4, 0.2, 0.3, 0.1), "sat": (0.05, 0.3),
                 "val": (0.75, 1.0), "room_sat": (0.0, 0.12), "scale": (3.5, 8.0),
                 "tex": (0.2, 0.4, 0.4), "hue2": (0.0, 0.0)},
    "task": {"count": (2, 6), "types": (0.25, 0.25, 0.25, 0.25), "sat": (0.65, 1.0),
             "val": (0.5, 1.0), "room_sat": (0.25, 0.7), "scale": (0.8, 3.0),
             "tex": (0.4, 0.3, 0.3), "hue2": (0.25, 0.75)},
    # the foundation encoder's pretraining scenes: wider than both in every knob (more clutter,
    # every colour and texture scale, harder light, more camera poses), drawn with other seeds
    "wide": {"count": (0, 12), "types": (0.25, 0.25, 0.25, 0.25), "sat": (0.0, 1.0),
             "val": (0.35, 1.0), "room_sat": (0.0, 0.8), "scale": (0.5, 9.0),
             "tex": (0.34, 0.33, 0.33), "hue2": (0.0, 0.75), "yaw": (-30, 30),
             "pitch": (-40, -2), "elevation": (10, 85), "ambient": (0.1, 0.6),
             "distance": (1.5, 6.0), "spread": 30},
}
# geometry knobs shared by "pretrain" and "task" (the wide distribution overrides them)
_GEOMETRY = {"yaw": (-10, 10), "pitch": (-25, -12), "elevation": (30, 75), "ambient": (0.3, 0.5),
             "distance": (2.0, 5.0), "spread": 22}


def _hsv(h: float, s: float, v: float) -> list[float]:
    i = int(h * 6.0) % 6
    f = h * 6.0 - math.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]


def _random_material(rng: np.random.Generator, knobs: dict, room: bool) -> dict:
    sat = knobs["room_sat"] if room else knobs["sat"]
    h = rng.uniform()
    s, v = rng.uniform(*sat), rng.uniform(*knobs["val"])
    h2 = (h + rng.uniform(*knobs["hue2"])) % 1.0
    s2 = rng.uniform(*sat)
    v2 = v * rng.uniform(0.55, 0.85)
    return {
        "color": _hsv(h, s, v), "color2": _hsv(h2, s2, v2),
        "texture": TEXTURES[rng.choice(3, p=knobs["tex"])],
        "scale": rng.uniform(*knobs["scale"]) * (0.6 if room else 1.0),
        "space": "world" if rng.uniform() < 0.5 else "object",
        "axis": rng.normal(size=3).tolist(),
        "phase": rng.uniform(size=3).tolist(),
    }


def sample_scene_spec(rng: np.random.Generator, distribution: str = "task") -> dict:
    """Draw one random scene in the :func:`render_scene_spec` format (independent of size)."""
    _check_distribution(distribution)
    knobs = {**_GEOMETRY, **_DIST[distribution]}
    hw, back = _ROOM_DEFAULT["half_width"], _ROOM_DEFAULT["depth"]
    cam = [rng.uniform(-0.4, 0.4), rng.uniform(1.2, 1.8), rng.uniform(-0.3, 0.3)]
    yaw, pitch = rng.uniform(*knobs["yaw"]), rng.uniform(*knobs["pitch"])
    # light from above and from the camera's side of the room, so the back wall is lit
    az, el = rng.uniform(0.1, math.pi - 0.1), math.radians(rng.uniform(*knobs["elevation"]))
    light = {"direction": [math.cos(el) * math.cos(az), math.sin(el), math.cos(el) * math.sin(az)],
             "ambient": rng.uniform(*knobs["ambient"])}
    surfaces = {name: _random_material(rng, knobs, room=True) for name in ROOM_SURFACES}
    lo, hi = knobs["count"]
    objects = []
    for _ in range(int(rng.integers(lo, hi + 1))):
        typ = OBJECT_TYPES[rng.choice(4, p=knobs["types"])]
        dist = rng.uniform(*knobs["distance"])
        ang = math.radians(yaw + rng.uniform(-knobs["spread"], knobs["spread"]))
        x, z = cam[0] - dist * math.sin(ang), cam[2] - dist * math.cos(ang)
        if typ == "sphere":
            r = rng.uniform(0.2, 0.55)
            o = {"type": typ, "radius": r}
            ext = r
        elif typ == "box":
            he = [rng.uniform(0.15, 0.5), rng.uniform(0.15, 0.6), rng.uniform(0.15, 0.5)]
            o = {"type": typ, "half_extents": he,
                 "yaw": 0.0 if rng.uniform() < 0.5 else rng.uniform(0, 90)}
            ext = math.hypot(he[0], he[2])
        else:
            r = rng.uniform(0.15, 0.45) if typ == "cylinder" else rng.uniform(0.2, 0.5)
            o = {"type": typ, "radius": r, "height": rng.uniform(0.3, 1.4)}
            ext = r
        x = float(np.clip(x, -hw + ext + 0.05, hw - ext - 0.05))
        z = max(z, -back + ext + 0.05)
        if typ == "sphere":
            o["center"] = [x, o["radius"], z]
        elif typ == "box":
            o["center"] = [x, o["half_extents"][1], z]
        else:
            o["base"] = [x, 0.0, z]
        o["material"] = _random_material(rng, knobs, room=False)
        objects.append(o)
    return {"camera": {"position": cam, "yaw": yaw, "pitch": pitch, "fov": FOV_DEG},
            "room": {"half_width": hw, "depth": back}, "light": light,
            "surfaces": surfaces, "objects": objects}


def _check_size(size: int) -> None:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 8:
        raise DataError(f"image size must be an integer >= 8, got {size!r}")


def _check_distribution(distribution: str) -> None:
    if distribution not in DISTRIBUTIONS:
        raise DataError(f"unknown scene distribution {distribution!r}; choose one of: "
                        f"{', '.join(DISTRIBUTIONS)}")


def _check_count(value: Any, what: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise DataError(f"{what} must be an integer >= {minimum}, got {value!r}")


def render_scenes(n: int, seed: int, size: int = 48, distribution: str = "task",
                  batch: int = 256, progress: bool = False,
                  fields: Sequence[str] = FIELDS) -> dict[str, np.ndarray]:
    """Render n random scenes with exact labels; sample i depends only on (seed, i, dist, size).

    Scene parameters come from ``np.random.default_rng([seed, i, dist_id])`` per sample, so any
    prefix of a larger request is identical; rendering is batched ``batch`` images at a time.
    Returns the :data:`FIELDS` arrays (leading dim n): image (n,H,W,3) float32 in [0,1], label
    (n,H,W) int16 (ids into :data:`CLASSES`, -1 = no hit), depth (n,H,W) float32 z-depth
    (0 = invalid), normal (n,H,W,3) float32 unit camera-frame normals facing the camera (zero
    = invalid), edge (n,H,W) float32 occlusion edges in {0,1}, keypoint (n,H,W) float32 heatmap.
    ``fields`` picks others: :data:`AUX_FIELDS` are albedo (n,H,W,3) float32 (surface colour
    before light), shading (n,H,W) float32 (ambient + Lambert term), texture (n,H,W) int8 (ids
    into :data:`TEXTURES`) and instance (n,H,W) int16 (surface id, see :func:`render_scene_spec`).
    """
    _check_count(n, "number of scenes n", 0)
    _check_count(seed, "seed", 0)
    _check_size(size)
    _check_distribution(distribution)
    _check_count(batch, "batch", 1)
    dist_id = DISTRIBUTIONS.index(distribution)
    n, size = int(n), int(size)
    unknown = sorted(set(fields) - set(FIELDS) - set(AUX_FIELDS))
    if unknown:
        raise DataError(f"unknown scene fields {unknown}; choose from: "
                        f"{', '.join(FIELDS + AUX_FIELDS)}")
    dtypes = {"label": np.int16, "instance": np.int16, "texture": np.int8}
    out = {k: np.zeros((n, size, size) + ((3,) if k in ("image", "normal", "albedo") else ()),
                       dtypes.get(k, np.float32)) for k in fields}
    starts = range(0, n, batch)
    if progress:
        from simo.progress import tqdm
        starts = tqdm(starts, desc=f"render {distribution} scenes", unit="batch")
    for s in starts:
        e = min(n, s + batch)
        specs = [sample_scene_spec(np.random.default_rng([seed, i, dist_id]), distribution)
                 for i in range(s, e)]
        res = _render_packed(_pack(specs), size, fields)
        for k in fields:
            out[k][s:e] = res[k]
    return out


if __name__ == "__main__":  # quick speed check (not a test): python -m simo.data.scenes
    import time

    render_scenes(8, 0)
    for dist in DISTRIBUTIONS:
        wall, cpu = [], []
        for rep in range(3):
            t0, c0 = time.perf_counter(), time.process_time()
            render_scenes(256, rep, size=48, distribution=dist, batch=256)
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        print(f"{dist}: {1000 * min(wall) / 256:.2f} ms/image wall, "
              f"{1000 * min(cpu) / 256:.2f} ms/image cpu (48x48, batches of 256, best of 3)")
