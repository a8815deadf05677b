"""The result table: one tidy row per (run, cell, metric), with provenance, as a documented CSV schema.

Rows are written with a file lock and an atomic rewrite, so concurrent writers never corrupt the file and a
crash leaves the previous complete file. :func:`done_cells` implements the only-missing rule of reruns.

Two hashes identify where a row comes from:

- ``config_hash``: everything that changes the row's numbers (data and its content, backbones, the probe stage,
  the run's seed and the probe seed) — part of the row identity, so a rerun adds only what is missing;
- ``setup_hash``: the same without the seeds. Rows that share a ``setup_hash`` and differ only in their seeds are
  replicates of one experiment; tables aggregate (mean ± std, seed counts, best cells) only within one setup, so
  results of two configs are never averaged as if they were seeds.

Schema history (old files are still read): v1 had no ``setup_hash`` (read as ``"v1"``, i.e. one unknown setup).
"""

from __future__ import annotations

import fcntl
import io
import subprocess
import time
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from probebench.core.errors import ProbebenchError
from probebench.core.io import atomic_write_bytes

SCHEMA_VERSION = 2
COLUMNS: dict[str, str] = {  # name -> pandas dtype
    "run": "string",
    "backbone": "string",
    "weights": "string",
    "task": "string",
    "dataset": "string",
    "split": "string",
    "probe": "string",
    "layer": "string",  # "3", or "1+4" for several layers
    "timestep": "string",  # native units as text; "none" for non-diffusion backbones
    "log_snr": "float64",
    "seed": "int64",
    "metric": "string",
    "value": "float64",
    "higher_is_better": "boolean",
    "lambda": "float64",
    "config_hash": "string",  # the fit's identity, seeds included
    "setup_hash": "string",  # the fit's identity without its seeds: rows of one setup are replicates
    "cache_hash": "string",
    "schema_version": "int64",
    "probebench_version": "string",
    "torch_version": "string",
    "timm_version": "string",
    "git_commit": "string",
    "created": "string",
}
IDENTITY = (
    "config_hash",
    "backbone",
    "weights",
    "task",
    "dataset",
    "split",
    "probe",
    "layer",
    "timestep",
    "seed",
    "metric",
)
RESULTS_FILE = "results.csv"
LEGACY_SETUP = "v1"  # setup_hash of rows read from a schema-v1 file


def git_commit() -> str:
    """The probebench source checkout's commit (``unknown`` outside a git checkout)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance() -> dict[str, Any]:
    from probebench.core.io import package_versions

    v = package_versions()
    return {
        "schema_version": SCHEMA_VERSION,
        "probebench_version": v["probebench"],
        "torch_version": v["torch"],
        "timm_version": v["timm"],
        "git_commit": git_commit(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def fmt_timestep(t: Any) -> str:
    """``none``, ``500``, ``0.25``, or ``0+0.25+0.5`` for several timesteps (fusion probes)."""
    if isinstance(t, (list, tuple)):
        return "+".join(fmt_timestep(x) for x in t)
    return "none" if t is None else format(t, "g")


def fmt_layers(layers: Any) -> str:
    return "+".join(str(int(x)) for x in layers) if isinstance(layers, (list, tuple)) else str(int(layers))


def to_frame(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Rows → a DataFrame with exactly the schema's columns and dtypes (missing columns are an error)."""
    df = pd.DataFrame(list(rows))
    missing_cols = [c for c in COLUMNS if c not in df.columns]
    if len(df) and missing_cols:
        raise ProbebenchError(f"Result rows lack the columns {missing_cols}.")
    df = df.reindex(columns=list(COLUMNS))
    return df.astype(COLUMNS)


def read_results(path: str | Path) -> pd.DataFrame:
    """Read a results CSV (a file, or a directory holding ``results.csv``) and check its schema."""
    p = Path(path)
    p = p / RESULTS_FILE if p.is_dir() else p
    if not p.is_file():
        raise ProbebenchError(f"No results file at {p}.")
    df = pd.read_csv(
        p,
        dtype={c: "string" for c, t in COLUMNS.items() if t == "string"},
        keep_default_na=False,
        na_values={"log_snr": [""], "lambda": [""], "value": ["", "nan", "NaN"]},
    )
    if "setup_hash" not in df.columns and "config_hash" in df.columns:  # schema v1: setups were not recorded
        df.insert(list(df.columns).index("config_hash") + 1, "setup_hash", LEGACY_SETUP)
    unknown = set(df.columns) - set(COLUMNS)
    missing_cols = [c for c in COLUMNS if c not in df.columns]
    if missing_cols or unknown:
        raise ProbebenchError(
            f"{p} does not have the probebench results schema v{SCHEMA_VERSION}: "
            f"missing columns {missing_cols}, unexpected {sorted(unknown)}."
        )
    return df.astype(COLUMNS)


@contextmanager
def locked(path: Path):
    """An exclusive advisory lock on ``<path>.lock`` for the read-modify-write of a results file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(path.suffix + ".lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def append_results(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    """Add rows whose identity is not yet in the file; returns how many were added. Atomic and locked."""
    p = Path(path)
    new = to_frame(rows)
    if new.empty:
        return 0
    with locked(p):
        old = read_results(p) if p.is_file() else to_frame([])
        if len(old):
            have = set(map(tuple, old[list(IDENTITY)].astype(str).itertuples(index=False)))
            keep = [tuple(r) not in have for r in new[list(IDENTITY)].astype(str).itertuples(index=False)]
            new = new[keep]
        if new.empty:
            return 0
        out = pd.concat([old, new], ignore_index=True) if len(old) else new
        buf = io.StringIO()
        out.to_csv(buf, index=False)
        atomic_write_bytes(p, buf.getvalue().encode())
    return len(new)


def done_cells(path: str | Path, config_hash: str) -> set[tuple[str, str, str]]:
    """(backbone, weights, task) triples that already have rows for this config hash (the only-missing rule)."""
    p = Path(path)
    if not p.is_file():
        return set()
    df = read_results(p)
    df = df[df["config_hash"] == config_hash]
    return set(zip(df["backbone"], df["weights"], df["task"]))
