"""Shared fixtures. Tests run offline (HF_HUB_OFFLINE=1) with a non-interactive matplotlib backend."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest

from probebench.config import load_config


@pytest.fixture
def small_config(tmp_path):
    """The quickstart at a size that runs in seconds, writing into tmp_path."""

    def make(*overrides: str):
        return load_config(
            None,
            [
                "data.max_train=24",
                "data.max_val=12",
                "data.max_test=12",
                "data.options.resolution=32",
                "backbones.0.image_size=64",
                "backbones.1.image_size=64",
                f"extract.cache_dir={tmp_path / 'cache'}",
                f"output_dir={tmp_path / 'results'}",
                "name=small",
                *overrides,
            ],
        )

    return make
