"""Shared fixtures. Tests run offline (HF_HUB_OFFLINE=1) with a non-interactive matplotlib backend."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
