"""Config overrides for pipeline runs small enough for a test."""

from __future__ import annotations

from pathlib import Path


def small_run(tmp_path: Path, *overrides: str) -> list[str]:
    """8/4/4 scenes at 16 px, then ``overrides``, then the feature cache in ``tmp_path/c`` and results in
    ``tmp_path/r``."""
    return [
        "data.max_train=8",
        "data.max_val=4",
        "data.max_test=4",
        "data.options.resolution=16",
        *overrides,
        f"extract.cache_dir={tmp_path / 'c'}",
        f"output_dir={tmp_path / 'r'}",
    ]
