"""A run directory's identity: which config and data its results belong to, and what its backbones are.

A run directory (``results/<run name>/``) holds ONE setup, so that its rows differ in their seeds alone and
every table can aggregate them safely: :func:`check_rerun` refuses a rerun that would add rows of another setup,
naming what changed. ``config.yaml`` records the resolved config, ``run.json`` the data's content identity, and
``backbones.json`` what each model's weights are (``adapter.weights_note``: e.g. how a random twin was built).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from probebench.config import RUNTIME_ONLY, RunConfig, load_config, stage_identity, to_dict
from probebench.core.errors import ProbebenchError
from probebench.core.io import atomic_write_json, stable_hash
from probebench.core.results import RESULTS_FILE, read_results
from probebench.core.rundir import CONFIG_FILE, RunDir

GROWABLE = ("backbones", "probes")  # lists a rerun may extend at the end
# keys whose change alters no existing row's numbers: the runtime-only ones (out of the config hash), the run's
# name, and what only adds rows (tasks, probe seeds)
FREE_KEYS = (*(path[0] for path in RUNTIME_ONLY), "name", "probe_seeds", "tasks")


def data_digests(data_id: dict[str, Any]) -> dict[str, str]:
    """One digest per split of a :func:`probebench.pipeline.data_identity` (what ``run.json`` records)."""
    return {w: stable_hash(d) for w, d in data_id.items()}


def write_run_file(out: Path, data_id: dict[str, Any]) -> None:
    """``run.json``: the data identity the run directory's results are made with (:func:`check_rerun` reads it)."""
    atomic_write_json(RunDir(out).run_file, {"data": data_digests(data_id)})


def _changes(old: Any, new: Any, path: str) -> list[str]:
    """``key: old → new`` for every leaf that differs between two config trees."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in list(dict.fromkeys([*old, *new])):
            sub = f"{path}.{k}" if path else str(k)
            if k not in old or k not in new:
                out.append(f"{sub}: {old.get(k, '(absent)')!r} → {new.get(k, '(absent)')!r}")
            else:
                out += _changes(old[k], new[k], sub)
        return out
    return [] if old == new else [f"{path}: {old!r} → {new!r}"]


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The changes from ``old`` to ``new`` (resolved config dicts) that would put rows of another setup into a
    run directory: anything that changes numbers, except adding backbones and probe stages at the end, and
    changing the tasks, the probe seeds or runtime-only keys (:data:`FREE_KEYS`)."""
    old, new = dict(old), dict(new)
    out = []
    for k in FREE_KEYS:
        old.pop(k, None)
        new.pop(k, None)
    for k in GROWABLE:
        o, n = list(old.pop(k, None) or []), list(new.pop(k, None) or [])
        if k == "probes":  # a stage's labels (its role) change no number
            o, n = (
                [stage_identity(x) if isinstance(x, dict) else x for x in o],
                [stage_identity(x) if isinstance(x, dict) else x for x in n],
            )
        for i, item in enumerate(o):
            out += [f"{k}.{i}: removed"] if i >= len(n) else _changes(item, n[i], f"{k}.{i}")
    return out + _changes(old, new, "")


def check_rerun(out: Path, cfg: RunConfig, data_id: dict[str, Any]) -> None:
    """Refuse to add rows of another setup to a run directory that already holds results.

    A run directory holds ONE config, so that its rows differ in their seeds alone and every table aggregates
    them safely. A rerun may add backbones and probe stages (at the end of their lists), tasks and probe seeds —
    only-missing then computes what is new; any other change that alters numbers (data, seed, an existing
    backbone or stage) or a change in the data's content is an error naming what changed."""
    results = out / RESULTS_FILE
    if not results.is_file() or read_results(results).empty:
        return
    problems: list[str] = []
    if (out / CONFIG_FILE).is_file():
        try:
            old = to_dict(load_config(out / CONFIG_FILE))
        except ProbebenchError:  # written by another version: compare what is there
            old = yaml.safe_load((out / CONFIG_FILE).read_text()) or {}
        problems += config_changes(old, to_dict(cfg))
    run_file = RunDir(out).run_file
    if run_file.is_file() and not any(p.startswith("data.") for p in problems):
        before = json.loads(run_file.read_text()).get("data", {})
        now = data_digests(data_id)
        problems += [
            f"the content of the {w} split changed (data identity {before[w]} → {now[w]})"
            for w in now
            if w in before and before[w] != now[w]
        ]
    if problems:
        shown = "; ".join(problems[:8]) + (
            f"; … ({len(problems)} changes in all)" if len(problems) > 8 else ""
        )
        raise ProbebenchError(
            f"{out} holds results of another config ({shown}). A run directory holds one config, so that its rows "
            "are seeds of one setup; a rerun may only add backbones or probe stages at the end, tasks and probe "
            f"seeds. Use another name (name=...), or delete {out} (in a sweep: --force CELL) to start over."
        )


def write_backbone_notes(out: Path, notes: dict[str, str]) -> None:
    """Merge ``{model: weights note}`` into the run directory's ``backbones.json`` (:class:`RunDir`)."""
    RunDir(out).write_backbone_notes(notes)
