"""The adapter contract (``backbones.contract``, ``probebench check-backbone``): every registered backbone
passes it, a plugin backbone passes it from the command line, and each deliberately broken adapter fails the
matching check."""

from __future__ import annotations

import inspect
import textwrap

import pytest

import backbones
import probebench.core.plugins as plugins
from backbones import BACKBONES
from backbones.contract import ADAPTER_CHECKS, CHECK_NAMES, check_backbone, check_offline, run_check
from probebench.cli import main

# Registry entries NOT checked here, each with the reason. Everything else is, so a new family (or a plugin on
# $PROBEBENCH_PLUGINS) is covered without editing this file; its ``test_name``/``test_kwargs`` pick a small config.
EXCLUDE: dict[str, str] = {
    "dinov3-vitb16": "its config='tiny' is the same 2-block ViT as dinov3-vits16's",
    "dinov3-vitl16": "its config='tiny' is the same 2-block ViT as dinov3-vits16's",
    "dinov3-vith16plus": "its config='tiny' is the same 2-block ViT as dinov3-vits16plus's",
}

ENTRIES = [e for e in BACKBONES if e.name not in EXCLUDE]
_ADAPTERS: dict[str, backbones.Adapter] = {}


def name_for(entry) -> str:
    return entry.extra.get("test_name", entry.name)


def make(entry) -> backbones.Adapter:
    """The entry's small test adapter with random weights (cached); compute batches of 2 when the factory
    takes them, so three images cross a compute-batch boundary."""
    if entry.name not in _ADAPTERS:
        factory = BACKBONES.get(name_for(entry))
        loaded = BACKBONES.entry(name_for(entry))  # an entry point's module, once imported, adds its metadata
        kw = dict(loaded.extra.get("test_kwargs", {}))
        params = inspect.signature(factory).parameters.values()
        if any(p.name == "compute_batch" or p.kind is p.VAR_KEYWORD for p in params):
            kw.setdefault("compute_batch", 2)
        _ADAPTERS[entry.name] = backbones.create(name_for(loaded), weights="random", **kw)
    return _ADAPTERS[entry.name]


def test_exclusions_name_registered_backbones():
    assert set(EXCLUDE) <= set(BACKBONES.names()), "a stale EXCLUDE entry hides nothing: remove it"


@pytest.mark.parametrize("check", CHECK_NAMES)
@pytest.mark.parametrize("entry", ENTRIES, ids=[name_for(e) for e in ENTRIES])
def test_every_registered_backbone_meets_the_adapter_contract(entry, check):
    if check == "offline":  # weights="default" offline with empty caches: a clear error in under a second
        result = check_offline(
            name_for(entry)
        )  # skips (saying so) where the default weights ship with a package
        assert result.status in ("pass", "skip"), result.line()
        return
    result = run_check(check, make(entry))
    assert result.passed, result.line()


def test_the_offline_check_skips_weights_that_ship_saying_so():
    result = check_offline("tiny-mmdit")
    assert result.status == "skip" and "the default weights are on disk" in result.line()
    assert not result.data["weights_id"].startswith("random")


# ------------------------------------------------------------------------------------------------ plugins

PLUGIN = '''\
"""A small CNN backbone in one file, registered with the README's decorator."""

from pathlib import Path

import torch
from torch import nn

from backbones import BACKBONES
from backbones.base import Adapter, BackboneMeta
from backbones.weights import load_state_dict_file

WIDTHS = (8, 16, 32)


class MyCNN(Adapter):
    def _extract(self, x, layers, timesteps, *, image_ids, seed, noise_draws):
        out, h = {}, x
        for i, block in enumerate(self.model.blocks):
            h = block(h)
            if i in layers:
                out[(i, None)] = h
            if i == max(layers):
                break  # early exit: deeper blocks never run
        return out


def build(cls, name, weights, device, dtype, **kwargs):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        chans = (3, *WIDTHS)
        model = nn.Module()
        model.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(chans[i], chans[i + 1], 3, stride=2, padding=1), nn.ReLU()) for i in range(3)
        )
    if weights != "random":
        path = Path("~/.cache/my-cnn/model.safetensors" if weights == "default" else weights).expanduser()
        model.load_state_dict(load_state_dict_file(path))
    meta = BackboneMeta(name=name, family="my-cnn", source="~/.cache/my-cnn", num_layers=3, width=WIDTHS)
    return cls(meta, model, weights=weights, weights_id=f"{weights}:seed0", device=device, dtype=dtype, **kwargs)


@BACKBONES.register(
    "my-cnn",
    kind="cnn",
    source="~/.cache/my-cnn/model.safetensors",
    notes="a plugin",
    test_name="my-cnn",
    test_kwargs={"image_size": 16},
)
def create_my_cnn(name, weights="default", device=None, dtype=None, **kwargs) -> Adapter:
    return build(MyCNN, name, weights, device, dtype, **kwargs)
'''

# adapters that each break one property: name → (the _extract or method they override, the checks that fail)
BROKEN = {
    "broken-batch": (  # normalised by the batch mean: depends on the other images (and the zero padding)
        "def _extract(self, x, layers, timesteps, **kw):\n"
        "    return {k: v - v.mean(0, keepdim=True) for k, v in MyCNN._extract(self, x, layers, timesteps, **kw).items()}",
        {"batch"},
    ),
    "broken-random": (  # unseeded noise: neither deterministic nor batch independent
        "def _extract(self, x, layers, timesteps, **kw):\n"
        "    return {k: v + torch.rand(()) for k, v in MyCNN._extract(self, x, layers, timesteps, **kw).items()}",
        {"determinism", "batch"},
    ),
    "broken-no-exit": (  # runs every block whatever the layer
        "def _extract(self, x, layers, timesteps, **kw):\n"
        "    full = MyCNN._extract(self, x, [0, 1, 2], timesteps, **kw)\n"
        "    return {(l, None): full[(l, None)] for l in layers}",
        {"early-exit"},
    ),
    "broken-inf": (  # an inf in the last layer
        "def _extract(self, x, layers, timesteps, **kw):\n"
        "    out = MyCNN._extract(self, x, layers, timesteps, **kw)\n"
        "    if (2, None) in out:\n"
        "        out[(2, None)][:, 0, 0, 0] = float('inf')\n"
        "    return out",
        {"finite"},
    ),
    "broken-channels-last": (  # (B, h, w, C) instead of (B, C, h, w)
        "def _extract(self, x, layers, timesteps, **kw):\n"
        "    return {k: v.permute(0, 2, 3, 1) for k, v in MyCNN._extract(self, x, layers, timesteps, **kw).items()}",
        {"shapes"},
    ),
    "broken-clamp": (  # silently clamps out-of-range layers instead of refusing them
        "def resolve_layers(self, spec):\n"
        "    if spec is None or spec == 'all':\n"
        "        return [0, 1, 2]\n"
        "    return sorted({min(max(int(l), -3), 2) % 3 for l in spec})",
        {"layer-range"},
    ),
    "broken-timesteps": (  # a non-diffusion model that keys its maps by the timesteps it was given
        "def resolve_timesteps(self, spec):\n    return [None] if spec is None else list(spec)\n\n"
        "def _extract(self, x, layers, timesteps, **kw):\n"
        "    out = MyCNN._extract(self, x, layers, timesteps, **kw)\n"
        "    return {(l, t): v for (l, _), v in out.items() for t in timesteps}",
        {"timesteps"},
    ),
    "broken-offline": (  # weights="default" fails with a raw RuntimeError instead of naming where it looked
        None,
        {"offline"},
    ),
    "broken-fallback": (  # weights="default" silently builds random weights when none are on disk
        None,
        {"offline"},
    ),
}


def broken_plugin() -> str:
    code = [PLUGIN]
    for name, (body, _) in BROKEN.items():
        cls = "Broken_" + name.replace("-", "_")
        code.append(f"\n\nclass {cls}(MyCNN):\n" + textwrap.indent(body or "pass", "    ") + "\n")
        factory = f"    return build({cls}, name, weights, device, dtype, **kwargs)"
        if name == "broken-offline":
            factory = "    if weights == 'default':\n        raise RuntimeError('no network')\n" + factory
        if name == "broken-fallback":
            factory = "    weights = 'random'\n" + factory
        code.append(
            f"\n\n@BACKBONES.register({name!r})\n"
            f"def create_{cls}(name, weights='default', device=None, dtype=None, **kwargs):\n{factory}\n"
        )
    return "".join(code)


@pytest.fixture
def plugin_files(tmp_path, isolated_registries):
    """``my_cnn.py`` and ``broken_cnns.py`` in tmp_path, no $PROBEBENCH_PLUGINS; the global registries and the
    variable (which ``--plugin`` extends) are restored afterwards (``isolated_registries``)."""
    good, broken = tmp_path / "my_cnn.py", tmp_path / "broken_cnns.py"
    good.write_text(PLUGIN)
    broken.write_text(broken_plugin())
    yield good, broken


def test_cli_check_backbone_passes_a_plugin_cnn(plugin_files, capsys):
    good, _ = plugin_files
    assert main(["check-backbone", "my-cnn", "--plugin", str(good)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "check-backbone my-cnn: weights=random"
    assert [ln.split()[:2] for ln in lines[1:-1]] == [["PASS", c] for c in ("build", *CHECK_NAMES)]
    assert "input 224 px" in lines[1] and "WeightsNotFoundError" in lines[-2]
    assert "layer 0 ran 1, layer 2 ran 3 of 3 model.blocks" in lines[6]
    assert lines[-1] == f"{len(CHECK_NAMES) + 1} passed, 0 failed, 0 skipped"
    # the registered test_kwargs on request; unknown names are one line, exit 2
    assert main(["--plugin", str(good), "check-backbone", "my-cnn", "--test-kwargs"]) == 0
    assert "input 16 px" in capsys.readouterr().out
    assert main(["check-backbone", "my-cnm", "--plugin", str(good)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Unknown backbone 'my-cnm'. Did you mean: my-cnn" in err[0]


def test_probebench_plugins_env_reaches_check_backbone(plugin_files, capsys, monkeypatch):
    good, _ = plugin_files
    monkeypatch.setenv(plugins.ENV_VAR, str(good))
    assert main(["check-backbone", "my-cnn", "--option", "image_size=16"]) == 0
    assert capsys.readouterr().out.strip().endswith(f"{len(CHECK_NAMES) + 1} passed, 0 failed, 0 skipped")


@pytest.mark.parametrize("name", list(BROKEN))
def test_a_broken_adapter_fails_the_matching_check(plugin_files, name):
    plugins.load_plugin(str(plugin_files[1]))
    results = check_backbone(name, options={"image_size": 16})
    failed = {r.check for r in results if r.status == "fail"}
    assert failed == BROKEN[name][1], [r.line() for r in results]


def test_cli_exit_code_1_when_a_check_fails(plugin_files, capsys):
    _, broken = plugin_files
    assert main(["check-backbone", "broken-batch", "--plugin", str(broken), "--option", "image_size=16"]) == 1
    out = capsys.readouterr().out
    assert (
        "FAIL  batch" in out
        and "alone vs in a batch of 3" in out
        and out.strip().endswith("1 failed, 0 skipped")
    )


def test_a_failing_build_is_a_fail_line_and_skips_the_adapter_checks(plugin_files):
    plugins.load_plugin(str(plugin_files[0]))
    results = check_backbone("my-cnn", options={"image_size": 2})  # the base Adapter refuses < 8 px
    assert results[0].check == "build" and results[0].status == "fail"
    assert "image_size must be >= 8 pixels" in results[0].detail
    assert [r.status for r in results[1:-1]] == ["skip"] * len(ADAPTER_CHECKS)
    assert results[-1].check == "offline"
