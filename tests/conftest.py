"""Shared fixtures. Tests run offline (HF_HUB_OFFLINE=1) with a non-interactive matplotlib backend."""

from __future__ import annotations

import os

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
