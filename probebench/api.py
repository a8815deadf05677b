"""The notebook API: what ``probebench run`` and ``probebench analyze`` do, as functions that return data.

    import probebench
    rows, run_dir = probebench.run("configs/efficientnet_scenes.yaml", data__max_train=32, name="nb")
    df = probebench.load_results(run_dir)                       # every row, with a ``model`` column
    fig = probebench.figures.layer_curves(df)                   # a matplotlib Figure; nothing written

Overrides are the command line's ``key.path=value`` as keyword arguments: ``__`` stands for the dot
(``data__max_train=32``), or pass dotted keys with ``**{"data.max_train": 32}``. Values are Python values.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd

from probebench.config import RunConfig, _merge, apply_overrides, from_dict, load_config, to_dict
from probebench.core.errors import ProbebenchError


class RunResult(NamedTuple):
    """What :func:`run` returns: the run's result rows (a ``model`` column added) and its directory."""

    rows: pd.DataFrame
    run_dir: Path


def _assignments(overrides: dict[str, Any]) -> list[str]:
    # JSON is valid YAML: the CLI's parser reads every Python value back as itself
    return [f"{key.replace('__', '.')}={json.dumps(value)}" for key, value in overrides.items()]


def make_config(config: str | Path | RunConfig | dict[str, Any] | None = None, **overrides: Any) -> RunConfig:
    """A validated :class:`RunConfig` from a YAML path, a config, a dict (over the defaults) or ``None`` (the
    defaults: the quickstart study), with ``overrides`` applied as :func:`run` takes them."""
    assignments = _assignments(overrides)
    if config is None or isinstance(config, (str, Path)):
        return load_config(config, assignments)
    if isinstance(config, RunConfig):
        data = to_dict(config)
    elif isinstance(config, dict):
        from_dict(RunConfig, config)  # unknown keys reported against the dict's own structure
        data = _merge(to_dict(RunConfig()), config)
    else:
        raise ProbebenchError(
            f"probebench.run takes a config path, a RunConfig, a dict or None; got {type(config).__name__}."
        )
    apply_overrides(data, assignments)
    return from_dict(RunConfig, data)


def run(
    config: str | Path | RunConfig | dict[str, Any] | None = None,
    /,
    *,
    extract: bool = True,
    analyze: bool = True,
    progress: bool = True,
    **overrides: Any,
) -> RunResult:
    """Run the pipeline (as ``probebench run``: only what is missing) and return its rows and directory."""
    from probebench.pipeline import run as run_pipeline

    out = run_pipeline(make_config(config, **overrides), extract=extract, analyze=analyze, progress=progress)
    return RunResult(load_results(out), out)


def load_results(paths: str | Path | list[str | Path]) -> pd.DataFrame:
    """The result rows of a run directory, a sweep directory (every cell), a ``results.csv`` or several of
    them, with a ``model`` column (``backbone (weights)``, told apart by run or setup where needed)."""
    from analysis.compare import load_results as load

    return load(paths)


def export_bundle(run_dir: str | Path, out: str | Path, **options: Any) -> Path:
    """``probebench export-bundle RUN_DIR --out OUT`` (options: ``variant``, ``model``, ``tasks``,
    ``stage_label``, ``cache_dir``, ``force``): a generation bundle of the run's fusion heads."""
    from probebench.bundles import export_bundle as export

    return export(run_dir, out, **options)
