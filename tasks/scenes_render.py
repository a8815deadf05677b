"""Procedural 3-D scene renderer (pure numpy ray caster) with exact dense labels.

Each scene is a pinhole-camera view of a ground plane (``floor``, y = 0), optionally a vertical back
wall, and 1-5 primitives (sphere, box, cylinder, cone, torus) resting on the floor.  Every pixel is
one ray through the pixel centre, so the labels are exact (no anti-aliasing):

* ``classes``  - class id of the nearest surface hit by the ray (0 = nothing hit, i.e. sky).
* ``depth``    - Euclidean distance (metres) from the camera centre to that same hit point; 0 where
  nothing is hit.  The camera has a far clip at ``MAX_DEPTH`` (20 m): surfaces at or beyond it count as
  nothing hit (class 0, depth 0), so valid depths lie in (0, MAX_DEPTH).  Only the (infinite) floor
  reaches that far; distance fog fades it into the horizon colour so the clip is invisible.
* ``instances`` - index of the primitive hit (into ``Scene.objects``); -1 for sky, floor and wall.
* ``saliency`` - **definition:** the salient object is the primitive with the most visible pixels
  in this image (ties broken by the lower primitive index).  The mask is exactly that primitive's
  visible pixels, i.e. ``instances == k``.  If no primitive is visible the mask is all False.

Shading: Lambert diffuse from one directional light + ambient term, with cast shadows (a shadow ray
from every lit surface point toward the light, tested against all primitives and the wall).  Sky is a
vertical gradient.  Textures (checker / stripes) are procedural in object, floor or wall coordinates.

Determinism: :func:`render_scene` is a pure function of ``(seed, index, resolution)``.  All scene
parameters are drawn first from ``np.random.default_rng([seed, index])`` and only then rendered, so the
scene layout does not depend on the resolution.

World frame: x right, y up, z forward (metres).  ``Scene.objects[k] = (class_name, params)`` with
geometric params (exact, so the geometry can be reconstructed) plus material params
(``colour``, ``colour2``, ``texture`` in {none, checker, stripes}, ``texture_scale``):

* sphere:   ``center``, ``radius``
* box:      ``center``, ``half_size`` (local x, y, z), ``yaw`` (local x axis = (cos yaw, 0, sin yaw))
* cylinder: ``base`` (centre of the bottom disk, on the floor), ``radius``, ``height``
* cone:     ``base``, ``radius`` (of the base disk), ``height`` (apex above ``base``)
* torus:    ``center``, ``major_radius``, ``minor_radius``, ``axis`` (unit; vertical = lying flat)
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import numpy as np

CLASS_NAMES: tuple[str, ...] = ("background", "floor", "wall", "sphere", "box", "cylinder", "cone", "torus")
NUM_CLASSES = len(CLASS_NAMES)
CLASS_IDS: dict[str, int] = {name: i for i, name in enumerate(CLASS_NAMES)}

PRIMITIVE_KINDS: tuple[str, ...] = ("sphere", "box", "cylinder", "cone", "torus")
MIN_RESOLUTION = 8
MAX_RESOLUTION = 4096
MAX_DEPTH = 20.0  # far clip (metres): surfaces at >= MAX_DEPTH count as "nothing hit" (depth 0)
_FAR = float(np.nextafter(np.float32(MAX_DEPTH), np.float32(0)))  # float32 depth stays < MAX_DEPTH
_FOG_START = 10.0  # aerial-perspective fog blends surfaces into the horizon colour up to MAX_DEPTH

_TMIN = 1e-6  # minimum ray parameter for camera rays
_SHADOW_OFFSET = 1e-4  # shadow-ray origins are pushed this far along the normal (metres)
_TORUS_STEPS = 64  # fixed march steps inside the torus bounding sphere
_TORUS_BISECT = 36  # bisection iterations refining a bracketed torus root

_INF = np.inf


@dataclass(frozen=True)
class Scene:
    """One rendered image with exact per-pixel labels (see module docstring for definitions)."""

    rgb: np.ndarray  # (H, W, 3) float32 in [0, 1]
    classes: np.ndarray  # (H, W) uint8
    depth: np.ndarray  # (H, W) float32, metres; 0 where nothing hit
    saliency: np.ndarray  # (H, W) bool
    instances: np.ndarray  # (H, W) int16, -1 for background/floor/wall
    objects: tuple  # per primitive: (class_name, params dict)


# --------------------------------------------------------------------------------------------------
# Materials and textures
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Material:
    """Base colour plus optional procedural texture evaluated on 3-D surface coordinates."""

    colour: tuple[float, float, float]
    colour2: tuple[float, float, float]
    texture: str = "none"  # "none" | "checker" | "stripes"
    scale: float = 0.2  # texture period (metres)
    axis: int = 0  # stripe axis in the surface coordinate frame

    def albedo(self, coords: np.ndarray) -> np.ndarray:
        """Per-point RGB albedo for (N, 3) surface coordinates."""
        c1 = np.asarray(self.colour)
        if self.texture == "none" or coords.shape[0] == 0:
            return np.broadcast_to(c1, (coords.shape[0], 3)).copy()
        cells = np.floor(coords / self.scale).astype(np.int64)
        if self.texture == "checker":
            odd = (cells.sum(axis=1) & 1).astype(bool)
        else:
            odd = (cells[:, self.axis] & 1).astype(bool)
        return np.where(odd[:, None], np.asarray(self.colour2), c1)

    def params(self) -> dict:
        return {
            "colour": tuple(round(float(c), 4) for c in self.colour),
            "colour2": tuple(round(float(c), 4) for c in self.colour2),
            "texture": self.texture,
            "texture_scale": round(float(self.scale), 4),
        }


# --------------------------------------------------------------------------------------------------
# Surfaces.  Every surface has  intersect(o, d, tmin) -> t (inf = miss),  normal(p),  coords(p).
# o: (3,) or (N, 3) ray origins, d: (N, 3) unit directions.
# --------------------------------------------------------------------------------------------------


def _nearest_of(tmin: float, *cands: np.ndarray) -> np.ndarray:
    """Smallest candidate root > tmin per ray (inf if none); NaNs count as misses."""
    best = np.full(cands[0].shape, _INF)
    for t in cands:
        ok = t > tmin  # NaN -> False
        np.minimum(best, np.where(ok, t, _INF), out=best)
    return best


def _quadratic(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both roots of a t^2 + b t + c (NaN where complex), numerically stable, tolerates a -> 0."""
    disc = b * b - 4.0 * a * c
    with np.errstate(invalid="ignore", divide="ignore"):
        q = -0.5 * (b + np.copysign(np.sqrt(disc), b))
        return q / a, c / q


class _Plane:
    """Infinite plane through ``point`` with unit ``normal`` (floor and wall)."""

    def __init__(self, kind: str, point, normal, material: _Material, u_axis) -> None:
        self.kind = kind
        self.point = np.asarray(point, dtype=np.float64)
        self.n = np.asarray(normal, dtype=np.float64)
        self.u = np.asarray(u_axis, dtype=np.float64)
        self.v = np.cross(self.n, self.u)
        self.material = material

    def intersect(self, o: np.ndarray, d: np.ndarray, tmin: float) -> np.ndarray:
        denom = d @ self.n
        num = (self.point - o) @ self.n
        with np.errstate(divide="ignore", invalid="ignore"):
            t = num / denom
        return _nearest_of(tmin, t)

    def normal(self, p: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.n, p.shape).copy()

    def coords(self, p: np.ndarray) -> np.ndarray:
        q = p - self.point
        return np.stack([q @ self.u, q @ self.v, np.zeros(len(p))], axis=1)


class _Sphere:
    kind = "sphere"

    def __init__(self, center, radius: float, material: _Material) -> None:
        self.c = np.asarray(center, dtype=np.float64)
        self.r = float(radius)
        self.material = material

    def params(self) -> dict:
        return {"center": tuple(self.c.tolist()), "radius": self.r}

    def intersect(self, o: np.ndarray, d: np.ndarray, tmin: float) -> np.ndarray:
        oc = o - self.c
        b = np.einsum("ij,ij->i", np.broadcast_to(oc, d.shape), d)
        cc = np.einsum("ij,ij->i", np.broadcast_to(oc, d.shape), np.broadcast_to(oc, d.shape)) - self.r**2
        disc = b * b - cc
        with np.errstate(invalid="ignore"):
            s = np.sqrt(disc)
        return _nearest_of(tmin, -b - s, -b + s)

    def normal(self, p: np.ndarray) -> np.ndarray:
        return (p - self.c) / self.r

    def coords(self, p: np.ndarray) -> np.ndarray:
        return p - self.c


class _Box:
    """Box resting on the floor, rotated by ``yaw`` about the vertical axis."""

    kind = "box"

    def __init__(self, center, half, yaw: float, material: _Material) -> None:
        self.c = np.asarray(center, dtype=np.float64)
        self.h = np.asarray(half, dtype=np.float64)
        self.yaw = float(yaw)
        cy, sy = math.cos(yaw), math.sin(yaw)
        # columns = local x, y, z axes expressed in world coordinates
        self.m = np.array([[cy, 0.0, -sy], [0.0, 1.0, 0.0], [sy, 0.0, cy]])
        self.material = material

    def params(self) -> dict:
        return {"center": tuple(self.c.tolist()), "half_size": tuple(self.h.tolist()), "yaw": self.yaw}

    def intersect(self, o: np.ndarray, d: np.ndarray, tmin: float) -> np.ndarray:
        ol = (o - self.c) @ self.m
        dl = d @ self.m
        dl = np.where(np.abs(dl) < 1e-12, 1e-12, dl)
        inv = 1.0 / dl
        t1 = (-self.h - ol) * inv
        t2 = (self.h - ol) * inv
        tnear = np.minimum(t1, t2).max(axis=1)
        tfar = np.maximum(t1, t2).min(axis=1)
        hit = tnear <= tfar
        t = np.where(tnear > tmin, tnear, tfar)
        return np.where(hit & (t > tmin), t, _INF)

    def normal(self, p: np.ndarray) -> np.ndarray:
        pl = (p - self.c) @ self.m
        rel = np.abs(pl) / self.h
        ax = rel.argmax(axis=1)
        nl = np.zeros_like(pl)
        nl[np.arange(len(p)), ax] = np.sign(pl[np.arange(len(p)), ax])
        return nl @ self.m.T

    def coords(self, p: np.ndarray) -> np.ndarray:
        return (p - self.c) @ self.m + self.h


class _Cylinder:
    """Vertical capped cylinder; ``base`` is the centre of the bottom disk (on the floor)."""

    kind = "cylinder"

    def __init__(self, base, radius: float, height: float, material: _Material) -> None:
        self.b = np.asarray(base, dtype=np.float64)
        self.r = float(radius)
        self.hgt = float(height)
        self.material = material

    def params(self) -> dict:
        return {"base": tuple(self.b.tolist()), "radius": self.r, "height": self.hgt}

    def intersect(self, o: np.ndarray, d: np.ndarray, tmin: float) -> np.ndarray:
        ol = np.broadcast_to(o - self.b, d.shape)
        ox, oy, oz = ol[:, 0], ol[:, 1], ol[:, 2]
        dx, dy, dz = d[:, 0], d[:, 1], d[:, 2]
        a = dx * dx + dz * dz
        bq = 2.0 * (ox * dx + oz * dz)
        c = ox * ox + oz * oz - self.r**2
        r0, r1 = _quadratic(a, bq, c)
        with np.errstate(invalid="ignore"):
            y0 = oy + r0 * dy
            y1 = oy + r1 * dy
            r0 = np.where((y0 >= 0.0) & (y0 <= self.hgt), r0, np.nan)
            r1 = np.where((y1 >= 0.0) & (y1 <= self.hgt), r1, np.nan)
        caps = []
        with np.errstate(divide="ignore", invalid="ignore"):
            for yc in (0.0, self.hgt):
                tc = (yc - oy) / dy
                xc = ox + tc * dx
                zc = oz + tc * dz
                caps.append(np.where(xc * xc + zc * zc <= self.r**2, tc, np.nan))
        return _nearest_of(tmin, r0, r1, *caps)

    def normal(self, p: np.ndarray) -> np.ndarray:
        q = p - self.b
        n = np.zeros_like(q)
        n[:, 0], n[:, 2] = q[:, 0], q[:, 2]
        n /= self.r
        eps = 1e-6 * max(1.0, self.hgt)
        top = q[:, 1] >= self.hgt - eps
        bot = q[:, 1] <= eps
        n[top] = (0.0, 1.0, 0.0)
        n[bot] = (0.0, -1.0, 0.0)
        return n / np.linalg.norm(n, axis=1, keepdims=True)

    def coords(self, p: np.ndarray) -> np.ndarray:
        q = p - self.b
        ang = np.arctan2(q[:, 2], q[:, 0]) * self.r
        return np.stack([ang, q[:, 1], np.hypot(q[:, 0], q[:, 2])], axis=1)


class _Cone:
    """Vertical cone, base disk (radius ``radius``) on the floor, apex at ``height``."""

    kind = "cone"

    def __init__(self, base, radius: float, height: float, material: _Material) -> None:
        self.b = np.asarray(base, dtype=np.float64)
        self.r = float(radius)
        self.hgt = float(height)
        self.k2 = (self.r / self.hgt) ** 2
        self.material = material

    def params(self) -> dict:
        return {"base": tuple(self.b.tolist()), "radius": self.r, "height": self.hgt}

    def intersect(self, o: np.ndarray, d: np.ndarray, tmin: float) -> np.ndarray:
        ol = np.broadcast_to(o - self.b, d.shape)
        ox, oy, oz = ol[:, 0], ol[:, 1], ol[:, 2]
        dx, dy, dz = d[:, 0], d[:, 1], d[:, 2]
        u0 = self.hgt - oy  # distance below apex
        a = dx * dx + dz * dz - self.k2 * dy * dy
        bq = 2.0 * (ox * dx + oz * dz + self.k2 * u0 * dy)
        c = ox * ox + oz * oz - self.k2 * u0 * u0
        r0, r1 = _quadratic(a, bq, c)
        with np.errstate(invalid="ignore"):
            y0 = oy + r0 * dy
            y1 = oy + r1 * dy
            r0 = np.where((y0 >= 0.0) & (y0 <= self.hgt), r0, np.nan)
            r1 = np.where((y1 >= 0.0) & (y1 <= self.hgt), r1, np.nan)
        with np.errstate(divide="ignore", invalid="ignore"):
            tc = -oy / dy
            xc = ox + tc * dx
            zc = oz + tc * dz
            cap = np.where(xc * xc + zc * zc <= self.r**2, tc, np.nan)
        return _nearest_of(tmin, r0, r1, cap)

    def normal(self, p: np.ndarray) -> np.ndarray:
        q = p - self.b
        n = np.stack([q[:, 0], self.k2 * (self.hgt - q[:, 1]), q[:, 2]], axis=1)
        n[q[:, 1] <= 1e-6 * max(1.0, self.hgt)] = (0.0, -1.0, 0.0)
        norm = np.linalg.norm(n, axis=1, keepdims=True)
        return n / np.maximum(norm, 1e-12)

    def coords(self, p: np.ndarray) -> np.ndarray:
        q = p - self.b
        ang = np.arctan2(q[:, 2], q[:, 0]) * self.r
        return np.stack([ang, q[:, 1], np.hypot(q[:, 0], q[:, 2])], axis=1)


class _Torus:
    """Torus with major radius R, minor radius r; ``frame`` columns = (e1, e2, axis) in world coords.

    Ray intersection solves the quartic numerically: the ray is clipped to the bounding sphere, the
    implicit function f(p) = (|p|^2 + R^2 - r^2)^2 - 4 R^2 (p_1^2 + p_2^2) (negative inside) is
    sampled at fixed steps to bracket the first sign change, which is then refined by bisection.
    """

    kind = "torus"

    def __init__(self, center, major: float, minor: float, frame, material: _Material) -> None:
        self.c = np.asarray(center, dtype=np.float64)
        self.R = float(major)
        self.r = float(minor)
        self.m = np.asarray(frame, dtype=np.float64)
        self.material = material

    @property
    def axis(self) -> np.ndarray:
        return self.m[:, 2]

    def params(self) -> dict:
        return {
            "center": tuple(self.c.tolist()),
            "major_radius": self.R,
            "minor_radius": self.r,
            "axis": tuple(self.axis.tolist()),
        }

    def _f(self, p: np.ndarray) -> np.ndarray:
        s = (p * p).sum(axis=-1) + self.R**2 - self.r**2
        return s * s - 4.0 * self.R**2 * (p[..., 0] ** 2 + p[..., 1] ** 2)

    def intersect(self, o: np.ndarray, d: np.ndarray, tmin: float) -> np.ndarray:
        n = d.shape[0]
        out = np.full(n, _INF)
        oc = np.broadcast_to((o - self.c) @ self.m, d.shape)
        dl = d @ self.m
        rb = self.R + self.r
        b = np.einsum("ij,ij->i", oc, dl)
        cc = np.einsum("ij,ij->i", oc, oc) - rb * rb
        disc = b * b - cc
        cand = disc > 0.0
        if not cand.any():
            return out
        idx = np.flatnonzero(cand)
        s = np.sqrt(disc[idx])
        t1 = -b[idx] + s
        keep = t1 > tmin
        idx, s, t1 = idx[keep], s[keep], t1[keep]
        if idx.size == 0:
            return out
        t0 = np.maximum(-b[idx] - s, tmin)
        o_s, d_s = oc[idx], dl[idx]
        steps = np.linspace(0.0, 1.0, _TORUS_STEPS + 1)
        ts = t0[:, None] + (t1 - t0)[:, None] * steps[None, :]
        f = self._f(o_s[:, None, :] + ts[:, :, None] * d_s[:, None, :])
        inside = f < 0.0
        has = inside.any(axis=1)
        if not has.any():
            return out
        first = inside.argmax(axis=1)[has]
        rows = np.flatnonzero(has)
        ts = ts[has]
        o_s, d_s = o_s[has], d_s[has]
        hi = ts[np.arange(len(rows)), first]
        lo = ts[np.arange(len(rows)), np.maximum(first - 1, 0)]
        for _ in range(_TORUS_BISECT):
            mid = 0.5 * (lo + hi)
            fin = self._f(o_s + mid[:, None] * d_s) < 0.0
            hi = np.where(fin, mid, hi)
            lo = np.where(fin, lo, mid)
        out[idx[rows]] = np.where(hi > tmin, hi, _INF)
        return out

    def normal(self, p: np.ndarray) -> np.ndarray:
        q = (p - self.c) @ self.m
        s = (q * q).sum(axis=1) + self.R**2 - self.r**2
        g = 4.0 * s[:, None] * q
        g[:, :2] -= 8.0 * self.R**2 * q[:, :2]
        g = g @ self.m.T
        return g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)

    def coords(self, p: np.ndarray) -> np.ndarray:
        q = (p - self.c) @ self.m
        ang = np.arctan2(q[:, 1], q[:, 0]) * self.R
        tube = np.arctan2(q[:, 2], np.hypot(q[:, 0], q[:, 1]) - self.R) * self.r
        return np.stack([ang, tube, np.zeros(len(p))], axis=1)


# --------------------------------------------------------------------------------------------------
# Scene specification (all random parameters; resolution independent)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Camera:
    origin: np.ndarray  # (3,)
    right: np.ndarray  # (3,)
    up: np.ndarray  # (3,)
    forward: np.ndarray  # (3,)
    tan_half_fov: float


@dataclass(frozen=True)
class _Light:
    direction: np.ndarray  # (3,) unit vector pointing TOWARD the light
    colour: np.ndarray  # (3,) intensity per channel
    ambient: np.ndarray  # (3,)


@dataclass(frozen=True)
class _SceneSpec:
    camera: _Camera
    light: _Light
    sky_top: np.ndarray
    sky_horizon: np.ndarray
    floor: _Plane
    wall: _Plane | None
    primitives: tuple

    @property
    def surfaces(self) -> list:
        """Primitives first (index = instance id), then floor, then wall if present."""
        out = [*self.primitives, self.floor]
        if self.wall is not None:
            out.append(self.wall)
        return out


def _hsv(h: float, s: float, v: float) -> tuple[float, float, float]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return (float(r), float(g), float(b))


def _sample_material(rng: np.random.Generator, kind: str) -> _Material:
    """Random colour and texture; ``kind`` selects palettes suited to objects, floors or walls."""
    if kind == "object":
        colour = _hsv(rng.random(), rng.uniform(0.45, 0.95), rng.uniform(0.55, 0.95))
        tex = rng.choice(["none", "none", "checker", "stripes"])
        scale = rng.uniform(0.08, 0.22)
    elif kind == "floor":
        colour = _hsv(rng.random(), rng.uniform(0.0, 0.35), rng.uniform(0.45, 0.85))
        tex = rng.choice(["none", "checker", "checker", "checker", "stripes"])
        scale = rng.uniform(0.35, 1.0)
    else:
        colour = _hsv(rng.random(), rng.uniform(0.0, 0.3), rng.uniform(0.5, 0.9))
        tex = rng.choice(["none", "none", "checker", "stripes", "stripes"])
        scale = rng.uniform(0.25, 0.8)
    if rng.random() < 0.5:
        colour2 = tuple(float(c * rng.uniform(0.45, 0.7)) for c in colour)
    else:
        colour2 = _hsv(rng.random(), rng.uniform(0.2, 0.9), rng.uniform(0.4, 0.95))
    axis = int(rng.integers(0, 2)) if kind != "object" else int(rng.integers(0, 3))
    return _Material(colour, colour2, str(tex), float(scale), axis)


def _footprint(kind: str, size: dict) -> float:
    """Radius of the object's bounding circle on the floor (for non-overlap)."""
    if kind == "box":
        return math.hypot(size["hx"], size["hz"])
    if kind == "torus":
        return size["R"] + size["r"]
    return size["r"]


def _sample_size(rng: np.random.Generator, kind: str) -> dict:
    if kind == "sphere":
        return {"r": rng.uniform(0.25, 0.6)}
    if kind == "box":
        return {"hx": rng.uniform(0.18, 0.5), "hy": rng.uniform(0.15, 0.55), "hz": rng.uniform(0.18, 0.5)}
    if kind == "cylinder":
        return {"r": rng.uniform(0.15, 0.45), "h": rng.uniform(0.3, 1.3)}
    if kind == "cone":
        return {"r": rng.uniform(0.2, 0.5), "h": rng.uniform(0.45, 1.3)}
    major = rng.uniform(0.3, 0.55)
    return {"R": major, "r": major * rng.uniform(0.25, 0.45), "standing": bool(rng.random() < 0.5)}


def _bounding_sphere(kind: str, size: dict) -> tuple[float, float]:
    """(centre height, radius) of a sphere enclosing the primitive, for screen-overlap tests."""
    if kind == "sphere":
        return size["r"], size["r"]
    if kind == "box":
        return size["hy"], math.sqrt(size["hx"] ** 2 + size["hy"] ** 2 + size["hz"] ** 2)
    if kind in ("cylinder", "cone"):
        return size["h"] / 2, math.hypot(size["r"], size["h"] / 2)
    if size["standing"]:
        return size["R"] + size["r"], size["R"] + size["r"]
    return size["r"], size["R"] + size["r"]


def _build_primitive(rng: np.random.Generator, kind: str, size: dict, x: float, z: float):
    mat = _sample_material(rng, "object")
    if kind == "sphere":
        return _Sphere((x, size["r"], z), size["r"], mat)
    if kind == "box":
        yaw = rng.uniform(0.0, math.pi / 2)
        return _Box((x, size["hy"], z), (size["hx"], size["hy"], size["hz"]), yaw, mat)
    if kind == "cylinder":
        return _Cylinder((x, 0.0, z), size["r"], size["h"], mat)
    if kind == "cone":
        return _Cone((x, 0.0, z), size["r"], size["h"], mat)
    major, minor = size["R"], size["r"]
    if size["standing"]:
        phi = rng.uniform(0.0, math.pi)
        axis = np.array([math.cos(phi), 0.0, math.sin(phi)])
        e1 = np.array([0.0, 1.0, 0.0])
        frame = np.stack([e1, np.cross(axis, e1), axis], axis=1)
        centre = (x, major + minor, z)
    else:
        frame = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])  # axis = world +y
        centre = (x, minor, z)
    return _Torus(centre, major, minor, frame, mat)


def _sample_spec(seed: int, index: int) -> _SceneSpec:
    """Draw every random scene parameter (camera, light, materials, layout) from (seed, index)."""
    rng = np.random.default_rng([seed, index])
    # camera
    height = rng.uniform(1.3, 2.0)
    pitch = math.radians(rng.uniform(15.0, 26.0))
    yaw = math.radians(rng.uniform(-10.0, 10.0))
    fov = math.radians(rng.uniform(50.0, 60.0))
    cam_x = rng.uniform(-0.3, 0.3)
    forward = np.array([math.sin(yaw) * math.cos(pitch), -math.sin(pitch), math.cos(yaw) * math.cos(pitch)])
    right = np.array([math.cos(yaw), 0.0, -math.sin(yaw)])
    up = np.cross(forward, right)
    origin = np.array([cam_x, height, 0.0])
    camera = _Camera(origin, right, up, forward, math.tan(fov / 2))
    ground_fwd = np.array([math.sin(yaw), 0.0, math.cos(yaw)])
    tan_half = math.tan(fov / 2)

    # primitives: rejection-sample positions that do not overlap on the floor and are not hidden
    n_obj = int(rng.integers(1, 6))
    placed: list[tuple[float, float, float, np.ndarray, float]] = []  # x, z, footprint, dir, ang radius
    prims = []
    for _ in range(n_obj):
        kind = PRIMITIVE_KINDS[int(rng.integers(0, len(PRIMITIVE_KINDS)))]
        size = _sample_size(rng, kind)
        foot = _footprint(kind, size)
        ch, crad = _bounding_sphere(kind, size)
        for _try in range(40):
            s = rng.uniform(2.4, 7.5)
            lat_max = max(0.0, tan_half * s * 0.85 - 0.5 * foot)
            lat = rng.uniform(-lat_max, lat_max)
            x = origin[0] + s * ground_fwd[0] + lat * right[0]
            z = origin[2] + s * ground_fwd[2] + lat * right[2]
            if any(math.hypot(x - px, z - pz) < foot + pf + 0.05 for px, pz, pf, _, _ in placed):
                continue
            vec = np.array([x, ch, z]) - origin
            dist = float(np.linalg.norm(vec))
            direc = vec / dist
            ang = math.asin(min(1.0, crad / dist))
            if any(
                math.acos(min(1.0, float(direc @ pdir))) < 0.55 * (ang + pang)
                for _, _, _, pdir, pang in placed
            ):
                continue
            placed.append((x, z, foot, direc, ang))
            prims.append(_build_primitive(rng, kind, size, x, z))
            break

    # floor
    floor = _Plane("floor", (0.0, 0.0, 0.0), (0.0, 1.0, 0.0), _sample_material(rng, "floor"), (1.0, 0.0, 0.0))
    # optional back wall facing the camera, behind every object
    wall = None
    if rng.random() < 0.5:
        beta = math.radians(rng.uniform(-15.0, 15.0))
        back = np.array(
            [
                ground_fwd[0] * math.cos(beta) + ground_fwd[2] * math.sin(beta),
                0.0,
                -ground_fwd[0] * math.sin(beta) + ground_fwd[2] * math.cos(beta),
            ]
        )  # direction from camera into the wall
        far = max(float((np.array([px, 0.0, pz]) - origin) @ back) + pf for px, pz, pf, _, _ in placed)
        dist = far + rng.uniform(0.4, 3.0)
        point = np.array([origin[0], 0.0, origin[2]]) + dist * back
        u_axis = np.cross((0.0, 1.0, 0.0), -back)
        wall = _Plane("wall", point, -back, _sample_material(rng, "wall"), u_axis)

    # light: from the camera side / sides so shadows are visible and the wall front is lit
    alpha = math.radians(rng.uniform(-70.0, 70.0))
    elev = math.radians(rng.uniform(30.0, 65.0))
    toward_cam = -ground_fwd
    hdir = np.array(
        [
            toward_cam[0] * math.cos(alpha) + toward_cam[2] * math.sin(alpha),
            0.0,
            -toward_cam[0] * math.sin(alpha) + toward_cam[2] * math.cos(alpha),
        ]
    )
    ldir = hdir * math.cos(elev) + np.array([0.0, math.sin(elev), 0.0])
    ldir /= np.linalg.norm(ldir)
    intensity = rng.uniform(0.75, 1.0)
    tint = 1.0 + rng.uniform(-0.08, 0.08, size=3)
    ambient = rng.uniform(0.2, 0.35) * (1.0 + rng.uniform(-0.05, 0.05, size=3))
    light = _Light(ldir, intensity * tint, ambient)

    sky_top = np.clip(np.array([0.3, 0.5, 0.9]) + rng.uniform(-0.12, 0.12, size=3), 0.0, 1.0)
    sky_horizon = np.clip(np.array([0.82, 0.86, 0.93]) + rng.uniform(-0.1, 0.06, size=3), 0.0, 1.0)
    return _SceneSpec(camera, light, sky_top, sky_horizon, floor, wall, tuple(prims))


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------


def _camera_rays(camera: _Camera, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """Camera centre (3,) and unit ray directions (resolution**2, 3) through pixel centres (row-major)."""
    coords = (np.arange(resolution) + 0.5) / resolution * 2.0 - 1.0
    u = coords * camera.tan_half_fov  # left -> right
    v = -coords * camera.tan_half_fov  # top -> bottom
    d = (
        camera.forward[None, None, :]
        + u[None, :, None] * camera.right[None, None, :]
        + v[:, None, None] * camera.up[None, None, :]
    ).reshape(-1, 3)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return camera.origin.copy(), d


def _trace(
    surfaces: list, o: np.ndarray, d: np.ndarray, tmin: float = _TMIN, far: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest hit over all surfaces: (t, surface index), t = inf and index = -1 where nothing is hit."""
    best_t = np.full(d.shape[0], _INF)
    best_i = np.full(d.shape[0], -1, dtype=np.int64)
    for i, surf in enumerate(surfaces):
        t = surf.intersect(o, d, tmin)
        closer = t < best_t
        best_t[closer] = t[closer]
        best_i[closer] = i
    if far is not None:
        beyond = best_t >= far
        best_t[beyond] = _INF
        best_i[beyond] = -1
    return best_t, best_i


def _shadow_lit(spec: _SceneSpec, points: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """True where the light is visible from ``points`` (shadow ray against primitives and wall)."""
    ldir = np.broadcast_to(spec.light.direction, points.shape)
    origins = points + _SHADOW_OFFSET * normals
    lit = np.ones(len(points), dtype=bool)
    blockers = list(spec.primitives) + ([spec.wall] if spec.wall is not None else [])
    for surf in blockers:
        if not lit.any():
            break
        idx = np.flatnonzero(lit)
        t = surf.intersect(origins[idx], ldir[idx], 1e-5)
        lit[idx[np.isfinite(t)]] = False
    return lit


def _render(spec: _SceneSpec, resolution: int, shadows: bool = True) -> Scene:
    """Ray-cast ``spec`` at ``resolution`` x ``resolution``."""
    origin, dirs = _camera_rays(spec.camera, resolution)
    surfaces = spec.surfaces
    n_prim = len(spec.primitives)
    t, sid = _trace(surfaces, origin, dirs, far=_FAR)
    hit = sid >= 0

    # sky gradient by ray elevation
    w = np.clip(dirs[:, 1] * 2.5, 0.0, 1.0)[:, None]  # below the horizon: exactly the horizon colour
    rgb = spec.sky_horizon[None, :] * (1.0 - w) + spec.sky_top[None, :] * w

    hit_idx = np.flatnonzero(hit)
    th = t[hit_idx]
    pixel_angle = 2.0 * spec.camera.tan_half_fov / resolution
    pts = origin + th[:, None] * dirs[hit_idx]
    normals = np.empty_like(pts)
    albedo = np.empty_like(pts)
    sid_h = sid[hit_idx]
    for i, surf in enumerate(surfaces):
        sel = np.flatnonzero(sid_h == i)
        if sel.size == 0:
            continue
        p = pts[sel]
        normals[sel] = surf.normal(p)
        albedo[sel] = surf.material.albedo(surf.coords(p))
        if surf.kind in ("floor", "wall") and surf.material.texture != "none":
            # cheap anti-aliasing: fade the texture to its mean colour where one pixel's footprint on the
            # plane approaches the texture period (moire near the horizon)
            cos_inc = np.abs(dirs[hit_idx[sel]] @ surf.n)
            footprint = th[sel] * pixel_angle / np.maximum(cos_inc, 1e-6)
            fade = np.clip((footprint / surf.material.scale - 0.2) / 0.4, 0.0, 1.0)[:, None]
            mean = 0.5 * (np.asarray(surf.material.colour) + np.asarray(surf.material.colour2))
            albedo[sel] = albedo[sel] * (1.0 - fade) + mean * fade
    # normals face the camera (all surfaces are closed or one-sided toward the camera, but be safe)
    flip = np.einsum("ij,ij->i", normals, dirs[hit_idx]) > 0.0
    normals[flip] *= -1.0
    ndl = np.clip(normals @ spec.light.direction, 0.0, None)
    vis = np.ones(len(hit_idx))
    if shadows:
        lit_sel = np.flatnonzero(ndl > 0.0)
        vis[lit_sel] = _shadow_lit(spec, pts[lit_sel], normals[lit_sel]).astype(np.float64)
    shade = spec.light.ambient[None, :] + spec.light.colour[None, :] * (ndl * vis)[:, None]
    fog = np.clip((th - _FOG_START) / (MAX_DEPTH - _FOG_START), 0.0, 1.0)[:, None] ** 1.5
    rgb[hit_idx] = albedo * shade * (1.0 - fog) + spec.sky_horizon[None, :] * fog
    rgb = np.clip(rgb, 0.0, 1.0).astype(np.float32).reshape(resolution, resolution, 3)

    class_lut = np.array([CLASS_IDS[s.kind] for s in surfaces] + [0], dtype=np.uint8)
    classes = class_lut[sid].reshape(resolution, resolution)  # sid == -1 -> last entry (background)
    inst_lut = np.array(list(range(n_prim)) + [-1] * (len(surfaces) - n_prim) + [-1], dtype=np.int16)
    instances = inst_lut[sid].reshape(resolution, resolution)
    depth = np.where(hit, t, 0.0).astype(np.float32).reshape(resolution, resolution)

    saliency = np.zeros((resolution, resolution), dtype=bool)
    if n_prim:
        counts = np.bincount(instances[instances >= 0].ravel(), minlength=n_prim)
        if counts.max() > 0:
            saliency = instances == int(counts.argmax())  # argmax -> lowest index on ties

    objects = tuple((p.kind, {**p.params(), **p.material.params()}) for p in spec.primitives)
    return Scene(rgb, classes, depth, saliency, instances, objects)


def render_scene(seed: int, index: int, resolution: int = 64) -> Scene:
    """Render scene ``index`` of the dataset ``seed`` as a ``resolution`` x ``resolution`` image.

    Pure function of its arguments; the layout is sampled independently of ``resolution``.
    """
    if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)):
        raise ValueError(
            f"resolution must be an int in [{MIN_RESOLUTION}, {MAX_RESOLUTION}], got {resolution!r}"
        )
    if not MIN_RESOLUTION <= resolution <= MAX_RESOLUTION:
        raise ValueError(f"resolution must be in [{MIN_RESOLUTION}, {MAX_RESOLUTION}], got {resolution}")
    for name, val in (("seed", seed), ("index", index)):
        if isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val < 0:
            raise ValueError(f"{name} must be a non-negative int, got {val!r}")
    return _render(_sample_spec(int(seed), int(index)), int(resolution))
