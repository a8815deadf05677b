"""Shared fixtures. Tests run offline (HF_HUB_OFFLINE=1) with a non-interactive matplotlib backend."""

from __future__ import annotations

import os
import sys

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True, scope="session")
def _hash_memo_in_tmp(tmp_path_factory):
    """Dataset file hashes are memoised in a per-session temporary file, never in the real home."""
    mp = pytest.MonkeyPatch()
    mp.setenv("PROBEBENCH_HASH_CACHE", str(tmp_path_factory.mktemp("hash_memo") / "file_hashes.sqlite"))
    yield
    mp.undo()


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run faster on one thread, above all on a shared machine (a module opts in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def isolated_registries(monkeypatch):
    """Plugins register into the global registries: restore them, the loaded-plugin memo and
    ``$PROBEBENCH_PLUGINS`` (which ``--plugin`` extends) afterwards, and forget the plugin modules."""
    import probebench.core.plugins as plugins
    from backbones import BACKBONES
    from probes import PROBES
    from tasks import TASKS

    regs = (BACKBONES, TASKS, PROBES)
    saved = [dict(r._entries) for r in regs]
    loaded = dict(plugins._LOADED)
    monkeypatch.setenv(plugins.ENV_VAR, "")  # recorded, so the teardown also removes what --plugin adds
    monkeypatch.delenv(plugins.ENV_VAR)
    yield
    for r, entries in zip(regs, saved):
        r._entries.clear()
        r._entries.update(entries)
    plugins._LOADED.clear()
    plugins._LOADED.update(loaded)
    for name in [m for m in sys.modules if m.startswith("probebench_plugin_")]:
        del sys.modules[name]


@pytest.fixture(scope="session")
def generation_run(tmp_path_factory):
    """A small tiny-mmdit run with spatial and single-timestep fusion heads for the three tasks (two probe seeds)
    and its exported generation bundle: (run dir, bundle dir, temporary dir). Generation tests share it."""
    from probebench.bundles import export_bundle
    from probebench.config import load_config
    from probebench.pipeline import run

    ts = "[0.0, 0.35, 0.7]"
    tmp = tmp_path_factory.mktemp("gen")
    cfg = load_config(
        None,
        [
            "data.max_train=16",
            "data.max_val=8",
            "data.max_test=8",
            "probe_seeds=[0, 1]",
            f"backbones=[{{name: tiny-mmdit, weights: default, layers: [2, 4], timesteps: {ts}, "
            "image_size: null, dtype: float32}]",
            "probes=[{name: ridge, params: {lambdas: [0.1, 1.0, 10.0]}}, "
            "{name: fusion, cells: best-layer, params: {mode: spatial, epochs: 2, patience: 0}}, "
            "{name: fusion, cells: best-layer, params: {mode: single, epochs: 2, patience: 0}}]",
            f"extract.cache_dir={tmp / 'cache'}",
            f"output_dir={tmp / 'results'}",
            "name=gen",
        ],
    )
    out = run(cfg, progress=False)
    bundle = export_bundle(out, tmp / "bundle")
    return out, bundle, tmp
