"""Tests for the procedural scene renderer: determinism, label consistency and geometry.

Geometry checks use signed-distance functions written here from ``Scene.objects`` params, i.e.
independently of the renderer's ray-intersection code.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from tasks.scenes_render import (
    CLASS_NAMES,
    MAX_DEPTH,
    NUM_CLASSES,
    Scene,
    _camera_rays,
    _Material,
    _render,
    _sample_spec,
    _shadow_lit,
    _Sphere,
    _Torus,
    render_scene,
)

CLS = {name: i for i, name in enumerate(CLASS_NAMES)}


# ---------------------------------------------------------------- independent SDFs (from params)


def _sdf(kind: str, prm: dict, p: np.ndarray) -> np.ndarray:
    """Signed distance (exact or 1-Lipschitz bound) of points p (..., 3) to the primitive."""
    if kind == "sphere":
        return np.linalg.norm(p - np.array(prm["center"]), axis=-1) - prm["radius"]
    if kind == "box":
        yaw = prm["yaw"]
        ex = np.array([math.cos(yaw), 0.0, math.sin(yaw)])
        ez = np.array([-math.sin(yaw), 0.0, math.cos(yaw)])
        q = p - np.array(prm["center"])
        loc = np.stack([q @ ex, q[..., 1], q @ ez], axis=-1)
        dd = np.abs(loc) - np.array(prm["half_size"])
        return np.linalg.norm(np.maximum(dd, 0.0), axis=-1) + np.minimum(dd.max(axis=-1), 0.0)
    if kind == "cylinder":
        q = p - np.array(prm["base"])
        h = prm["height"]
        dd = np.stack([np.hypot(q[..., 0], q[..., 2]) - prm["radius"], np.abs(q[..., 1] - h / 2) - h / 2], -1)
        return np.linalg.norm(np.maximum(dd, 0.0), axis=-1) + np.minimum(dd.max(axis=-1), 0.0)
    if kind == "cone":
        q = p - np.array(prm["base"])
        r, h = prm["radius"], prm["height"]
        side = (np.hypot(q[..., 0], q[..., 2]) - r * (h - q[..., 1]) / h) * (h / math.hypot(r, h))
        return np.maximum(side, -q[..., 1])
    if kind == "torus":
        q = p - np.array(prm["center"])
        ax = np.array(prm["axis"])
        a = q @ ax
        radial = np.linalg.norm(q - a[..., None] * ax, axis=-1)
        return np.hypot(radial - prm["major_radius"], a) - prm["minor_radius"]
    raise AssertionError(kind)


def _all_sdfs(scene: Scene, spec, p: np.ndarray) -> dict:
    """SDF of every surface: instance index -> sdf, plus 'floor' and (if any) 'wall'."""
    out = {k: _sdf(kind, prm, p) for k, (kind, prm) in enumerate(scene.objects)}
    out["floor"] = p[..., 1]
    if spec.wall is not None:
        out["wall"] = (p - spec.wall.point) @ spec.wall.n
    return out


def _scenes_covering_everything(res: int) -> list[tuple[int, Scene]]:
    """A few scenes that together contain every primitive kind, a wall and a no-wall scene."""
    need = set(CLASS_NAMES[3:]) | {"wall", "nowall"}
    picked = []
    for idx in range(60):
        sc = render_scene(7, idx, res)
        spec = _sample_spec(7, idx)
        have = {k for k, _ in sc.objects} | {"wall" if spec.wall is not None else "nowall"}
        if have & need:
            picked.append((idx, sc))
            need -= have
        if not need:
            return picked
    raise AssertionError(f"no scenes found containing {need}")


# ---------------------------------------------------------------- basic contract


def test_shapes_dtypes_ranges_and_label_consistency():
    for idx in range(6):
        sc = render_scene(0, idx, 40)
        assert sc.rgb.shape == (40, 40, 3) and sc.rgb.dtype == np.float32
        assert sc.classes.shape == (40, 40) and sc.classes.dtype == np.uint8
        assert sc.depth.shape == (40, 40) and sc.depth.dtype == np.float32
        assert sc.saliency.shape == (40, 40) and sc.saliency.dtype == np.bool_
        assert sc.instances.shape == (40, 40) and sc.instances.dtype == np.int16
        assert np.isfinite(sc.rgb).all() and sc.rgb.min() >= 0.0 and sc.rgb.max() <= 1.0
        assert sc.classes.max() < NUM_CLASSES
        assert 1 <= len(sc.objects) <= 5
        assert sc.instances.min() >= -1 and sc.instances.max() < len(sc.objects)
        # instance pixels <=> object classes, with the class of that object
        assert np.array_equal(sc.instances >= 0, sc.classes >= 3)
        for k, (kind, _) in enumerate(sc.objects):
            assert (sc.classes[sc.instances == k] == CLS[kind]).all()
        # depth valid exactly where something is hit
        hit = sc.classes != 0
        assert np.isfinite(sc.depth).all()
        assert (sc.depth[hit] > 0).all() and (sc.depth[~hit] == 0).all()
        assert sc.depth.max() < MAX_DEPTH
        # the rgb is not flat
        assert sc.rgb.std() > 0.02


def test_determinism_and_variation():
    a, b = render_scene(3, 11, 48), render_scene(3, 11, 48)
    for f in ("rgb", "classes", "depth", "saliency", "instances"):
        assert getattr(a, f).tobytes() == getattr(b, f).tobytes()
    assert a.objects == b.objects
    c = render_scene(3, 12, 48)
    d = render_scene(4, 11, 48)
    assert a.rgb.tobytes() != c.rgb.tobytes() and a.objects != c.objects
    assert a.rgb.tobytes() != d.rgb.tobytes() and a.objects != d.objects
    # global RNG state is neither used nor disturbed
    np.random.seed(0)
    state = np.random.get_state()[1].copy()
    e = render_scene(3, 11, 48)
    assert np.array_equal(np.random.get_state()[1], state)
    assert e.rgb.tobytes() == a.rgb.tobytes()


def test_layout_independent_of_resolution():
    for idx in range(4):
        lo, hi = render_scene(5, idx, 64), render_scene(5, idx, 128)
        assert lo.objects == hi.objects
        agree = (hi.classes[::2, ::2] == lo.classes).mean()
        assert agree > 0.9, agree
        # depth close where both hit the same non-floor class (floor depth varies fast near the horizon)
        same = (hi.classes[1::2, 1::2] == lo.classes) & (lo.classes >= 2)
        rel = np.abs(hi.depth[1::2, 1::2] - lo.depth)[same] / lo.depth[same]
        assert np.median(rel) < 0.05 if rel.size else True


@pytest.mark.parametrize("bad", [0, 4, 7, -64, 5000, 64.0, "64", True])
def test_bad_resolution_raises(bad):
    with pytest.raises(ValueError, match=r"\[8, 4096\]"):
        render_scene(0, 0, bad)


@pytest.mark.parametrize("seed,index", [(-1, 0), (0, -3), (0, 1.5)])
def test_bad_seed_index_raises(seed, index):
    with pytest.raises(ValueError, match="non-negative int"):
        render_scene(seed, index, 16)


def test_numpy_int_arguments_accepted():
    a = render_scene(np.int64(2), np.int32(3), np.int64(16))
    b = render_scene(2, 3, 16)
    assert a.rgb.tobytes() == b.rgb.tobytes()


def test_every_class_appears():
    seen = np.zeros(NUM_CLASSES, dtype=bool)
    for idx in range(200):
        sc = render_scene(1, idx, 32)
        seen[np.unique(sc.classes)] = True
        if seen.all():
            break
    assert seen.all(), [CLASS_NAMES[i] for i in np.flatnonzero(~seen)]


# ---------------------------------------------------------------- geometry of the labels


def test_labels_are_nearest_surface_hits():
    """Hit point lies on the labelled surface; nothing is entered before it along the ray."""
    res = 40
    for idx, sc in _scenes_covering_everything(res):
        spec = _sample_spec(7, idx)
        origin, dirs = _camera_rays(spec.camera, res)
        dirs = dirs.reshape(res, res, 3)
        depth = sc.depth.astype(np.float64)
        hit = sc.classes > 0

        # 1) hit point lies on the surface it is labelled with
        p = origin + depth[..., None] * dirs
        sdfs = _all_sdfs(sc, spec, p)
        tol = 1e-4 + 3e-7 * depth  # depth is stored as float32
        for k in range(len(sc.objects)):
            m = sc.instances == k
            assert (np.abs(sdfs[k][m]) < tol[m]).all(), (idx, k, sc.objects[k][0])
        m = sc.classes == CLS["floor"]
        assert (np.abs(sdfs["floor"][m]) < tol[m]).all()
        if spec.wall is not None:
            m = sc.classes == CLS["wall"]
            assert (np.abs(sdfs["wall"][m]) < tol[m]).all()
        else:
            assert not (sc.classes == CLS["wall"]).any()

        # background below the horizon only where the floor lies beyond the far clip
        down = ~hit & (dirs[..., 1] < 0)
        floor_t = origin[1] / -dirs[..., 1][down]
        assert (floor_t >= MAX_DEPTH - 1e-4).all()

        # 2) analytic sphere distance (independent quadratic) equals the stored depth
        for k, (kind, prm) in enumerate(sc.objects):
            m = sc.instances == k
            if kind != "sphere" or not m.any():
                continue
            oc = origin - np.array(prm["center"])
            b = dirs[m] @ oc
            t_exact = -b - np.sqrt(b * b - (oc @ oc - prm["radius"] ** 2))
            np.testing.assert_allclose(depth[m], t_exact, rtol=1e-6, atol=1e-5)

        # 3) no surface is entered before the hit (background: before the far clip)
        reach = np.where(hit, depth, MAX_DEPTH)
        fr = np.linspace(0.0, 1.0, 241)[:-1]
        pts = origin + (reach[..., None, None] * fr[:, None]) * dirs[:, :, None, :]
        for name, s in _all_sdfs(sc, spec, pts).items():
            worst = s.min()
            assert worst > -5e-3, (idx, name, worst)


def test_torus_quartic_matches_polynomial_roots():
    """Torus intersection agrees with numpy.roots on the exact quartic for many random rays."""
    rng = np.random.default_rng(0)
    mat = _Material((1.0, 0.0, 0.0), (0.0, 1.0, 0.0))
    for axis in (np.array([0.0, 1.0, 0.0]), np.array([0.6, 0.0, 0.8])):
        e1 = np.cross(axis, [0.0, 0.0, 1.0]) if abs(axis[2]) < 0.9 else np.cross(axis, [1.0, 0.0, 0.0])
        e1 /= np.linalg.norm(e1)
        frame = np.stack([e1, np.cross(axis, e1), axis], axis=1)
        major, minor = 0.5, 0.15
        centre = np.array([0.2, 0.4, 4.0])
        tor = _Torus(centre, major, minor, frame, mat)
        origin = np.array([0.0, 1.5, 0.0])
        target = centre + rng.uniform(-0.7, 0.7, size=(400, 3))
        d = target - origin
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        t = tor.intersect(origin, d, 1e-6)
        for i in range(len(d)):
            o = origin - centre
            # |p|^2 + R^2 - r^2 = t^2 + 2 b t + c0 ;  planar part q(t) = |o_perp + t d_perp|^2
            b, c0 = o @ d[i], o @ o + major**2 - minor**2
            op, dp = o - (o @ axis) * axis, d[i] - (d[i] @ axis) * axis
            g = np.array([1.0, 2 * b, c0])
            poly = np.polymul(g, g) - 4 * major**2 * np.array([0, 0, dp @ dp, 2 * op @ dp, op @ op])
            roots = np.roots(poly)
            real = roots[(np.abs(roots.imag) < 1e-7) & (roots.real > 1e-6)].real
            if real.size == 0:
                assert not np.isfinite(t[i])
                continue
            expected = real.min()
            if np.isfinite(t[i]):
                assert abs(t[i] - expected) < 1e-6, (t[i], expected)
            else:
                # a miss is only tolerated for grazing (double-root) rays
                assert np.ptp(np.sort(real)[:2]) < 1e-2 if real.size > 1 else True
        assert np.isfinite(t).sum() > 100


# ---------------------------------------------------------------- saliency


def test_saliency_is_largest_visible_instance():
    n_nonempty = 0
    for idx in range(40):
        sc = render_scene(2, idx, 32)
        counts = np.bincount(sc.instances[sc.instances >= 0], minlength=len(sc.objects))
        if counts.sum() == 0:
            assert not sc.saliency.any()
            continue
        k = int(np.flatnonzero(counts == counts.max())[0])  # ties -> lowest index
        assert np.array_equal(sc.saliency, sc.instances == k)
        assert (sc.classes[sc.saliency] >= 3).all()
        n_nonempty += 1
    assert n_nonempty >= 35


def test_saliency_empty_when_no_object_visible():
    spec = _sample_spec(0, 0)
    behind = _Sphere(spec.camera.origin - 5.0 * spec.camera.forward, 0.5, spec.primitives[0].material)
    sc = _render(dataclasses.replace(spec, primitives=(behind,)), 32)
    assert (sc.instances == -1).all() and not sc.saliency.any()
    assert len(sc.objects) == 1


# ---------------------------------------------------------------- shadows


def test_shadow_helper_geometry():
    spec = _sample_spec(0, 1)
    ldir = spec.light.direction
    sph = _Sphere((0.0, 0.5, 4.0), 0.5, spec.primitives[0].material)
    spec = dataclasses.replace(spec, primitives=(sph,), wall=None)
    centre = np.array([0.0, 0.5, 4.0])
    under = centre - ldir * (centre[1] / ldir[1])  # floor point where the sphere centre's shadow falls
    far = under + np.array([5.0, 0.0, 0.0])
    pts = np.stack([under, far])
    normals = np.tile([0.0, 1.0, 0.0], (2, 1))
    assert _shadow_lit(spec, pts, normals).tolist() == [False, True]


def test_cast_shadows_darken_exactly_occluded_floor():
    """Shadowed render <= unshadowed render; darkened floor pixels have a blocker toward the light."""
    res = 48
    n_with_shadow = 0
    for idx in range(10):
        spec = _sample_spec(9, idx)
        lit, flat = _render(spec, res), _render(spec, res, shadows=False)
        assert np.array_equal(lit.classes, flat.classes) and np.array_equal(lit.depth, flat.depth)
        assert (lit.rgb <= flat.rgb + 1e-6).all()
        floor = lit.classes == CLS["floor"]
        dark = (lit.rgb.sum(-1) < flat.rgb.sum(-1) - 1e-3) & floor
        if not dark.any():
            continue
        n_with_shadow += 1
        # sphere-trace toward the light with the test's own (exact / 1-Lipschitz) SDFs
        origin, dirs = _camera_rays(spec.camera, res)
        p = origin + lit.depth[floor].astype(np.float64)[:, None] * dirs.reshape(res, res, 3)[floor]
        t = np.full(len(p), 1e-3)
        closest = np.full(len(p), np.inf)
        for _ in range(200):
            q = p + t[:, None] * spec.light.direction
            step = np.min([_sdf(kind, prm, q) for kind, prm in lit.objects], axis=0)
            closest = np.where(t < 30.0, np.minimum(closest, step), closest)
            t = t + np.maximum(step, 0.0)
        in_shadow = dark[floor]
        assert (closest[in_shadow] < 1e-3).mean() > 0.98  # darkened => a primitive blocks the light
        # not darkened => nothing blocks the light (allow a rare grazing ray)
        assert (closest[~in_shadow] < 1e-5).sum() <= max(1, 0.002 * (~in_shadow).sum())
    assert n_with_shadow >= 5
