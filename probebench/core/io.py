"""Leaf utilities shared by every stage: stable hashes and atomic file writes (temp file + os.replace)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def stable_hash(obj: Any, n: int = 16) -> str:
    """A short SHA-256 of a JSON-serialisable object (sorted keys), stable across machines and runs."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def _read_umask() -> int:
    mask = os.umask(0o022)  # os.umask can only be read by setting it: put it straight back
    os.umask(mask)
    return mask


_UMASK = _read_umask()
FILE_MODE = 0o666 & ~_UMASK  # what open() would give a new file (0644 under the usual umask 022)


def _temp_file(path: Path) -> tuple[int, str]:
    """A temporary file beside ``path`` with the permissions a plainly created file would have (``mkstemp``
    makes it 0600, which would leave results unreadable to the rest of a group)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, FILE_MODE)
    return fd, tmp


def atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = _temp_file(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n").encode())


def atomic_save_npy(path: Path, array: np.ndarray, fsync: bool = True) -> None:
    """Save ``array`` (no pickle) to a temporary name and rename it into place: a killed process leaves the whole
    file or none. ``fsync=False`` skips waiting for the disk (the file still survives a killed process; after an
    OS crash it may be short, which readers that know its size detect)."""
    fd, tmp = _temp_file(path)
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array, allow_pickle=False)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("probebench", "torch", "timm", "diffusers", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out
