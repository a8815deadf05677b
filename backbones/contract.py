"""The adapter contract as executable checks: what ``probebench check-backbone NAME`` prints and what the
registry-parametrized tests assert, for every registered backbone (plugins included).

The contract (DESIGN.md, "Public contracts"): ``adapter.extract(images, layers, timesteps=None)`` takes float RGB
in [0, 1] of shape (B, 3, H, W) and returns ``{(layer, timestep): (B, C, h, w)}`` float32 tensors; layers are
0-based (negative from the end) and an out-of-range layer is one error naming the range; the timestep is
``None`` for non-diffusion models, which refuse (or ignore) timesteps; prefix tokens (CLS, registers) never
enter the map; features are deterministic, and an image's features depend neither on the other images of its
batch nor on the batch size; a forward stops after the deepest requested block; with ``HF_HUB_OFFLINE=1`` and no
weights on disk, ``weights="default"`` fails with a clear error in under a second. Diffusion adapters also draw
noise as a pure function of (seed, image id, draw): the seed changes the features, an image id changes only its
own image, and noise draws are averaged.

Each check returns a :class:`CheckResult` (status, one number, one sentence, structured ``data``) instead of
raising, so one broken property does not hide the others; an exception inside a check is that check's FAIL.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from backbones._registry import BACKBONES
from backbones.base import Adapter
from probebench.core.errors import ProbebenchError

Status = Literal["pass", "fail", "skip"]

OFFLINE_BUDGET_S = 1.0
"""``weights="default"`` with nothing on disk and ``HF_HUB_OFFLINE=1`` must fail within this many seconds."""


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one contract check: ``status``, one measured number (``value``, named by ``label``), a
    sentence for people (``detail``) and structured ``data`` for tests."""

    check: str
    status: Status
    value: float | None = None
    label: str = ""
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    def line(self) -> str:
        """``PASS  shapes       maps=9  ...``: one line of ``probebench check-backbone``."""
        number = "" if self.value is None else f"{self.label}={self.value:.3g}"
        return f"{self.status.upper():<4}  {self.check:<11}  {number:<16}  {self.detail}".rstrip()


# ------------------------------------------------------------------------------------------------ helpers


def _images(n: int, size: int = 40, seed: int = 0) -> torch.Tensor:
    """Seeded random RGB images in [0, 1]; the adapter resizes them to its own input size."""
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _probe_layers(n: int) -> list[int]:
    """The first, second and last layer (fewer when the backbone has fewer)."""
    return sorted({0, min(1, n - 1), n - 1})


def two_timesteps(adapter: Adapter) -> list[Any]:
    """Two distinct, noisy timesteps in the adapter's native units (t = 300, 700 for DDPM; σ = 0.3, 0.7 for
    flow matching; otherwise the last two of its defaults)."""
    convention = adapter.meta.timestep_convention
    if convention == "ddpm":
        return [300, 700]
    if convention == "flow":
        return [0.3, 0.7]
    defaults = list(dict.fromkeys(adapter.resolve_timesteps(None)))
    if len(defaults) < 2:
        raise ProbebenchError(
            f"{adapter.name}: timestep convention {convention!r} has fewer than two default timesteps "
            f"({defaults}); the contract needs two."
        )
    return defaults[-2:]


def _extract(adapter: Adapter, x: torch.Tensor, layers: Any, timesteps: Any = None, **kw: Any) -> dict:
    """``adapter.extract`` with timesteps and noise arguments only for diffusion backbones."""
    if adapter.meta.is_diffusion:
        return adapter.extract(x, layers, timesteps, **kw)
    return adapter.extract(x, layers)


def _max_diff(a: Mapping[Any, torch.Tensor], b: Mapping[Any, torch.Tensor]) -> float:
    diffs = [float((a[k].double() - b[k].double()).abs().max()) for k in a if k in b and a[k].numel()]
    return max(diffs, default=0.0)


def _expected_grid(adapter: Adapter) -> tuple[int, int] | None:
    """The token grid a columnar model's maps must have (so no prefix token can be in them); ``None`` when the
    adapter gives no way to know it (CNNs, multi-scale models)."""
    s = adapter.image_size
    vae_factor, token_grid = getattr(adapter, "vae_factor", None), getattr(adapter, "token_grid", None)
    if isinstance(vae_factor, int) and callable(token_grid):
        return tuple(token_grid((s // vae_factor, s // vae_factor)))
    patch, width = adapter.meta.patch_size, adapter.meta.width
    if isinstance(patch, int) and patch > 0 and isinstance(width, int):
        return s // patch, s // patch
    return None


def _blocks(adapter: Adapter) -> tuple[list[nn.Module], str]:
    """The modules whose runs measure depth: the adapter's ``blocks()`` (layer i = block i), else the model's
    ``blocks``/``stages``/``layers`` list, else every leaf module of ``adapter.model``."""
    fn = getattr(adapter, "blocks", None)
    if callable(fn):
        mods = list(fn())
        if mods and all(isinstance(m, nn.Module) for m in mods):
            return mods, "blocks()"
    for attr in ("blocks", "stages", "layers"):
        mods = getattr(adapter.model, attr, None)
        if isinstance(mods, (nn.ModuleList, nn.Sequential)) and len(mods):
            return list(mods), f"model.{attr}"
    return [m for m in adapter.model.modules() if next(m.children(), None) is None], "leaf modules"


def _shape_text(t: Any) -> str:
    return str(tuple(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__


# ------------------------------------------------------------------------------------------------ checks


def check_shapes(adapter: Adapter) -> CheckResult:
    """Keys are exactly the requested ``(layer, timestep)`` pairs (negative layers resolved); values are
    float32 CPU tensors (B, C, h, w) with C = the declared width and, for columnar models, (h, w) = the token
    grid, which leaves no room for CLS or register tokens."""
    n = adapter.num_layers
    request = [0, 1, -1] if n >= 3 else [0, -1] if n == 2 else [0]
    layers = _probe_layers(n)
    ts = adapter.resolve_timesteps(None)[:3] if adapter.meta.is_diffusion else [None]
    feats = _extract(adapter, _images(3), request, ts)
    expected = {(layer, t) for layer in layers for t in ts}
    problems = []
    if set(feats) != expected:
        problems.append(f"keys {sorted(feats, key=str)} != expected {sorted(expected, key=str)}")
    grid = _expected_grid(adapter)
    width = adapter.meta.width
    for key, f in sorted(feats.items(), key=lambda kv: str(kv[0])):
        if not isinstance(f, torch.Tensor) or f.ndim != 4:
            problems.append(f"{key}: {_shape_text(f)} is not a (B, C, h, w) tensor")
            continue
        c = width[key[0]] if isinstance(width, tuple) and 0 <= key[0] < len(width) else width
        if f.shape[0] != 3 or f.shape[1] != c:
            problems.append(f"{key}: shape {_shape_text(f)}, expected (3, {c}, h, w)")
        if grid is not None and tuple(f.shape[-2:]) != grid:
            problems.append(f"{key}: spatial size {tuple(f.shape[-2:])} != the token grid {grid}")
        if f.dtype != torch.float32 or f.device.type != "cpu":
            problems.append(f"{key}: {f.dtype} on {f.device}, expected torch.float32 on cpu")
    shapes = list(dict.fromkeys(_shape_text(f) for _, f in sorted(feats.items(), key=lambda kv: str(kv[0]))))
    data = {"keys": sorted(feats, key=str), "shapes": shapes, "grid": grid, "layers": layers, "timesteps": ts}
    if problems:
        return CheckResult("shapes", "fail", len(feats), "maps", "; ".join(problems[:4]), data)
    where = "no timesteps" if not adapter.meta.is_diffusion else f"timesteps {ts}"
    grid_text = f", grid {grid[0]}x{grid[1]} (no prefix tokens)" if grid else ""
    detail = f"layers {request} -> {layers}, {where}: {', '.join(shapes)} float32{grid_text}"
    return CheckResult("shapes", "pass", len(feats), "maps", detail, data)


def check_finite(adapter: Adapter) -> CheckResult:
    """Every layer at every default timestep is finite (no NaN or inf)."""
    ts = adapter.resolve_timesteps(None) if adapter.meta.is_diffusion else None
    feats = _extract(adapter, _images(1, seed=1), "all", ts)
    bad = [k for k, f in feats.items() if not bool(torch.isfinite(f).all())]
    finite = [f[torch.isfinite(f)] for f in feats.values()]
    peak = max((float(f.abs().max()) for f in finite if f.numel()), default=0.0)
    data = {"bad": bad, "max_abs": peak}
    if bad or not feats:
        detail = f"non-finite values at {sorted(bad, key=str)[:6]}" if bad else "no features returned"
        return CheckResult("finite", "fail", peak, "max_abs", detail, data)
    return CheckResult("finite", "pass", peak, "max_abs", f"all {len(feats)} maps finite", data)


def check_determinism(adapter: Adapter) -> CheckResult:
    """The same call twice gives bit-identical features. Diffusion: a different seed changes them, and changing
    one image's id changes that image's features only (noise is a pure function of seed, image id, draw)."""
    x, layer = _images(2), [min(1, adapter.num_layers - 1)]
    if not adapter.meta.is_diffusion:
        f1, f2 = adapter.extract(x, layer), adapter.extract(x, layer)
        diff = _max_diff(f1, f2)
        same = set(f1) == set(f2) and all(torch.equal(f1[k], f2[k]) for k in f1)
        detail = "a repeated call is bit-identical" if same else "a repeated call gives different features"
        return CheckResult("determinism", "pass" if same else "fail", diff, "max_diff", detail)
    ts, ids = two_timesteps(adapter), ["img-a", "img-b"]
    f1 = adapter.extract(x, layer, ts, image_ids=ids, seed=3)
    f2 = adapter.extract(x, layer, ts, image_ids=ids, seed=3)
    f3 = adapter.extract(x, layer, ts, image_ids=ids, seed=4)
    f4 = adapter.extract(x, layer, ts, image_ids=["img-c", "img-b"], seed=3)
    diff = _max_diff(f1, f2)
    problems = []
    if not (set(f1) == set(f2) and all(torch.equal(f1[k], f2[k]) for k in f1)):
        problems.append("a repeated call gives different features")
    if any(torch.allclose(f1[k], f3[k]) for k in f1):
        problems.append("seed 3 and seed 4 give the same features (the seed does not reach the noise)")
    if any(torch.allclose(f1[k][0], f4[k][0]) for k in f1):
        problems.append("a new id for image 0 leaves its features unchanged (noise does not follow the id)")
    if not all(torch.equal(f1[k][1], f4[k][1]) for k in f1):
        problems.append("a new id for image 0 changed image 1's features")
    if problems:
        return CheckResult("determinism", "fail", diff, "max_diff", "; ".join(problems))
    detail = "a repeated call is bit-identical; noise follows (seed, image id): a new seed or id changes it"
    return CheckResult("determinism", "pass", diff, "max_diff", detail)


def check_batch(adapter: Adapter) -> CheckResult:
    """Three images in one batch, each alone, and the batch reversed: bit-identical features per image (with
    ids, and two noise draws, for diffusion backbones)."""
    x, layers = _images(3), [0, -1]
    if adapter.meta.is_diffusion:
        ts, ids = two_timesteps(adapter), ["p", "q", "r"]
        whole = adapter.extract(x, layers, ts, image_ids=ids, noise_draws=2)
        alone = [
            adapter.extract(x[i : i + 1], layers, ts, image_ids=[ids[i]], noise_draws=2) for i in range(3)
        ]
        flipped = adapter.extract(x.flip(0), layers, ts, image_ids=ids[::-1], noise_draws=2)
    else:
        whole = adapter.extract(x, layers)
        alone = [adapter.extract(x[i : i + 1], layers) for i in range(3)]
        flipped = adapter.extract(x.flip(0), layers)
    joined = {k: torch.cat([a[k] for a in alone]) for k in whole}
    reversed_back = {k: flipped[k].flip(0) for k in whole}
    diff = max(_max_diff(whole, joined), _max_diff(whole, reversed_back))
    problems = []
    if not all(torch.equal(v, joined[k]) for k, v in whole.items()):
        problems.append("an image's features change with the batch (alone vs in a batch of 3)")
    if not all(torch.equal(v, reversed_back[k]) for k, v in whole.items()):
        problems.append("an image's features change with its position in the batch")
    if problems:
        return CheckResult("batch", "fail", diff, "max_diff", "; ".join(problems))
    return CheckResult(
        "batch", "pass", diff, "max_diff", "alone, in a batch of 3 and reversed: bit-identical"
    )


def check_early_exit(adapter: Adapter, layers: Sequence[int] | None = None) -> CheckResult:
    """Asking for the first layer runs fewer blocks than asking for the last one (forward hooks count the blocks
    that ran; ``layers`` adds layers in between, whose counts must not decrease). When the adapter's ``blocks()``
    are its layers, layer l must run exactly blocks 0..l."""
    n = adapter.num_layers
    if n < 2:
        return CheckResult("early-exit", "skip", None, "", "one layer: nothing to stop early from")
    probe = sorted({0, n - 1, *(layer % n for layer in layers or ())})
    blocks, how = _blocks(adapter)
    exact = how == "blocks()" and len(blocks) == n
    ran: list[int] = []
    hooks = [b.register_forward_hook(lambda *_a, i=i: ran.append(i)) for i, b in enumerate(blocks)]
    runs: dict[int, list[int]] = {}
    try:
        for layer in probe:
            ran.clear()
            ts = two_timesteps(adapter)[:1] if adapter.meta.is_diffusion else None
            _extract(adapter, _images(1), [layer], ts)
            runs[layer] = sorted(set(ran))
    finally:
        for h in hooks:
            h.remove()
    counts = {layer: len(r) for layer, r in runs.items()}
    first, last = min(counts), max(counts)
    text = ", ".join(f"layer {layer} ran {c}" for layer, c in counts.items()) + f" of {len(blocks)} {how}"
    data = {"runs": runs, "counts": counts, "blocks": len(blocks), "how": how, "exact": exact}
    if exact:
        wrong = [layer for layer, r in runs.items() if r != list(range(layer + 1))]
        ok = not wrong
        if wrong:
            text += f"; layer {wrong[0]} ran blocks {runs[wrong[0]]}, expected 0..{wrong[0]}"
    else:
        ordered = [counts[layer] for layer in sorted(counts)]
        ok = counts[last] > 0 and counts[first] < counts[last] and ordered == sorted(ordered)
        if not ok:
            text += "; a shallower layer must run fewer blocks than the last (stop after the deepest asked)"
    return CheckResult("early-exit", "pass" if ok else "fail", counts[first], "blocks", text, data)


def check_timesteps(adapter: Adapter) -> CheckResult:
    """Diffusion: two timesteps give different features, as do 1 vs 2 noise draws (and for flow matching, σ = 0
    is the clean latent, so the draws do not matter there). Non-diffusion: timesteps are refused with a
    ProbebenchError, or ignored (keys keep timestep ``None``, features unchanged)."""
    x, layer = _images(2), min(1, adapter.num_layers - 1)
    if not adapter.meta.is_diffusion:
        try:
            given = adapter.extract(x[:1], [layer], [500])
        except ProbebenchError as e:
            return CheckResult("timesteps", "pass", None, "", f"refused: {e}", {"refused": str(e)})
        plain = adapter.extract(x[:1], [layer])
        if set(given) == set(plain) and all(torch.equal(given[k], plain[k]) for k in plain):
            return CheckResult("timesteps", "pass", 0.0, "max_diff", "timesteps are ignored (keys keep None)")
        return CheckResult(
            "timesteps",
            "fail",
            _max_diff(plain, given),
            "max_diff",
            f"a non-diffusion backbone took timesteps=[500] and returned keys {sorted(given, key=str)}: refuse "
            "them with a ProbebenchError (the base Adapter does) or ignore them",
        )
    ids = ["u", "v"]
    t1, t2 = two_timesteps(adapter)
    f = adapter.extract(x, [layer], [t1, t2], image_ids=ids)
    a, b = f[(layer, t1)], f[(layer, t2)]
    rel = float((a - b).abs().mean() / (a.abs().mean() + b.abs().mean()).clamp_min(1e-12) * 2)
    problems = []
    if torch.allclose(a, b):
        problems.append(f"t={t1} and t={t2} give the same features")
    one = adapter.extract(x, [layer], [t2], image_ids=ids, noise_draws=1)[(layer, t2)]
    two = adapter.extract(x, [layer], [t2], image_ids=ids, noise_draws=2)[(layer, t2)]
    if torch.allclose(one, two):
        problems.append("noise_draws=2 gives the same features as 1 (draws are not averaged)")
    if adapter.meta.timestep_convention == "flow":  # sigma = 0 is the clean latent: the draws do not matter
        c1 = adapter.extract(x, [layer], [0.0], image_ids=ids, noise_draws=1)[(layer, 0.0)]
        c3 = adapter.extract(x, [layer], [0.0], image_ids=ids, noise_draws=3)[(layer, 0.0)]
        if not torch.equal(c1, c3):
            problems.append("at sigma=0 (clean latent) the noise draws change the features")
    if problems:
        return CheckResult("timesteps", "fail", rel, "rel_diff", "; ".join(problems))
    detail = f"t={t1} vs t={t2} differ; 1 vs 2 noise draws differ" + (
        "; sigma=0 ignores the draws" if adapter.meta.timestep_convention == "flow" else ""
    )
    return CheckResult("timesteps", "pass", rel, "rel_diff", detail)


def check_layer_range(adapter: Adapter) -> CheckResult:
    """Layer ``n`` and layer ``-(n+1)`` of an n-layer backbone are each refused with ONE ProbebenchError whose
    message names the valid range (``0..n-1``)."""
    n = adapter.num_layers
    ts = two_timesteps(adapter)[:1] if adapter.meta.is_diffusion else None
    range_re = re.compile(rf"\b0\s*(?:\.\.\.?|-|–|to)\s*{n - 1}\b")
    problems, messages = [], []
    for bad in (n, -n - 1):
        try:
            got = _extract(adapter, _images(1), [bad], ts)
        except ProbebenchError as e:
            messages.append(str(e))
            if not range_re.search(str(e)):
                problems.append(f"layer {bad}: the error does not name the range 0..{n - 1}: {e}")
        except Exception as e:
            problems.append(f"layer {bad}: raised {type(e).__name__} ({e}), expected a ProbebenchError")
        else:
            problems.append(f"layer {bad} of {n} was accepted (keys {sorted(got, key=str)[:3]})")
    data = {"messages": messages}
    if problems:
        return CheckResult("layer-range", "fail", n, "layers", "; ".join(problems), data)
    return CheckResult("layer-range", "pass", n, "layers", f"layer {n} -> {messages[0]}", data)


@contextlib.contextmanager
def empty_offline_caches() -> Iterator[str]:
    """``HF_HUB_OFFLINE=1`` with the Hugging Face and torch caches pointed at an empty temporary folder (yielded:
    the HF hub cache); everything is restored on exit."""
    with tempfile.TemporaryDirectory(prefix="probebench-offline-") as tmp:
        hub = os.path.join(tmp, "hf", "hub")
        env = {
            "HF_HUB_OFFLINE": "1",
            "HF_HOME": os.path.join(tmp, "hf"),
            "HF_HUB_CACHE": hub,
            "HUGGINGFACE_HUB_CACHE": hub,
            "TORCH_HOME": os.path.join(tmp, "torch"),
        }
        saved_env = {k: os.environ.get(k) for k in env}
        saved_consts: dict[str, Any] = {}
        try:
            from huggingface_hub import constants as hf_constants
        except ImportError:  # pragma: no cover - a dependency
            hf_constants = None
        try:
            os.environ.update(env)
            if hf_constants is not None:  # read once at import: patch the module's copies too
                for name, value in (
                    ("HF_HUB_CACHE", hub),
                    ("HF_HOME", env["HF_HOME"]),
                    ("HF_HUB_OFFLINE", True),
                ):
                    if hasattr(hf_constants, name):
                        saved_consts[name] = getattr(hf_constants, name)
                        setattr(hf_constants, name, value)
            yield hub
        finally:
            for k, v in saved_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            for name, value in saved_consts.items():
                setattr(hf_constants, name, value)


def check_offline(name: str, options: Mapping[str, Any] | None = None) -> CheckResult:
    """``backbones.create(name, weights="default", **options)`` offline with empty caches must raise a
    ProbebenchError (``WeightsNotFoundError``) or FileNotFoundError within :data:`OFFLINE_BUDGET_S`. Skipped,
    saying so, when it builds: the default weights are on disk (shipped with a package) — unless what it built
    has random weights (a ``weights_id`` starting with ``random``), a silent fallback, which fails."""
    from backbones import create

    with empty_offline_caches() as cache:
        t0 = time.perf_counter()
        try:
            adapter = create(name, weights="default", **dict(options or {}))
        except (ProbebenchError, FileNotFoundError) as e:
            seconds = time.perf_counter() - t0
            data = {"message": str(e), "error": type(e).__name__, "cache": cache, "seconds": seconds}
            if seconds > OFFLINE_BUDGET_S:
                detail = (
                    f"took {seconds:.2f} s (limit {OFFLINE_BUDGET_S:g} s) to raise {type(e).__name__}: {e}"
                )
                return CheckResult("offline", "fail", seconds, "seconds", detail, data)
            return CheckResult("offline", "pass", seconds, "seconds", f"{type(e).__name__}: {e}", data)
        except Exception as e:
            seconds = time.perf_counter() - t0
            detail = (
                f"raised {type(e).__name__}: {e} -- expected a ProbebenchError (WeightsNotFoundError) naming where "
                "it looked"
            )
            return CheckResult(
                "offline", "fail", seconds, "seconds", detail, {"message": str(e), "cache": cache}
            )
        seconds = time.perf_counter() - t0
    weights_id = str(getattr(adapter, "weights_id", "?"))
    if weights_id.startswith("random"):
        detail = f"weights='default' built random weights ({weights_id}) instead of failing: never fall back silently"
        return CheckResult("offline", "fail", seconds, "seconds", detail, {"weights_id": weights_id})
    detail = f"skipped: the default weights are on disk ({weights_id}), nothing to check offline"
    return CheckResult("offline", "skip", seconds, "seconds", detail, {"weights_id": weights_id})


# ------------------------------------------------------------------------------------------------ runners

ADAPTER_CHECKS: dict[str, Callable[[Adapter], CheckResult]] = {
    "shapes": check_shapes,
    "finite": check_finite,
    "determinism": check_determinism,
    "batch": check_batch,
    "early-exit": check_early_exit,
    "timesteps": check_timesteps,
    "layer-range": check_layer_range,
}
"""Checks on a built adapter, in the order they run; ``offline`` (by name, not adapter) runs last."""

CHECK_NAMES: tuple[str, ...] = (*ADAPTER_CHECKS, "offline")


def run_check(check: str, adapter: Adapter) -> CheckResult:
    """One adapter check by name; an exception inside it is that check's FAIL (with the error)."""
    if check not in ADAPTER_CHECKS:
        from probebench.core.errors import UnknownNameError

        raise UnknownNameError("contract check", check, ADAPTER_CHECKS)
    try:
        return ADAPTER_CHECKS[check](adapter)
    except Exception as e:
        return CheckResult(check, "fail", None, "", f"raised {type(e).__name__}: {e}", {"exception": e})


def iter_checks(
    name: str,
    *,
    weights: str = "random",
    options: Mapping[str, Any] | None = None,
    offline_options: Mapping[str, Any] | None = None,
    checks: Sequence[str] | None = None,
    device: Any = None,
    dtype: Any = None,
) -> Iterator[CheckResult]:
    """Build ``name`` (``build``: seconds) and run the contract checks, yielding each result as it is known.

    ``options`` go to ``backbones.create`` for the adapter under test; the offline check builds
    ``weights="default"`` with ``offline_options`` (default: ``options``). An unknown name raises
    :class:`UnknownNameError`; a build that raises is the ``build`` check's FAIL (the others are skipped).
    """
    from backbones import create

    selected = list(CHECK_NAMES if checks is None else checks)
    for c in selected:
        if c not in CHECK_NAMES:
            from probebench.core.errors import UnknownNameError

            raise UnknownNameError("contract check", c, CHECK_NAMES)
    BACKBONES.entry(name)  # unknown names: one error with did-you-mean, before anything is built
    options = dict(options or {})
    t0 = time.perf_counter()
    adapter: Adapter | None = None
    try:
        adapter = create(name, weights=weights, device=device, dtype=dtype, **options)
    except Exception as e:
        build = CheckResult(
            "build",
            "fail",
            time.perf_counter() - t0,
            "seconds",
            f"backbones.create({name!r}, weights={weights!r}, **{options}) raised {type(e).__name__}: {e}",
        )
    else:
        seconds = time.perf_counter() - t0
        if not isinstance(adapter, Adapter):
            build = CheckResult(
                "build",
                "fail",
                seconds,
                "seconds",
                f"the factory returned {type(adapter).__name__}, not an Adapter",
            )
            adapter = None
        else:
            kind = (
                f"diffusion ({adapter.meta.timestep_convention})"
                if adapter.meta.is_diffusion
                else "no timesteps"
            )
            detail = (
                f"{type(adapter).__name__}: {adapter.num_layers} layers, {kind}, input {adapter.image_size} px, "
                f"weights {adapter.weights_id}"
            )
            build = CheckResult("build", "pass", seconds, "seconds", detail)
    yield build
    for check in selected:
        if check == "offline":
            yield check_offline(name, options if offline_options is None else offline_options)
        elif adapter is None:
            yield CheckResult(check, "skip", None, "", "not run: the backbone did not build")
        else:
            yield run_check(check, adapter)


def check_backbone(name: str, **kwargs: Any) -> list[CheckResult]:
    """All results of :func:`iter_checks` as a list (``build`` first)."""
    return list(iter_checks(name, **kwargs))
