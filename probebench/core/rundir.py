"""The layout of a results directory, in one place: the pipeline writes through it, analysis reads through it.

A **run directory** (``results/<run name>/``) holds one setup's results::

    results.csv          tidy result rows (schema: :mod:`probebench.core.results`)
    config.yaml          the resolved config (its probe stages may declare a ``role``, e.g. noise-control)
    run.json             the data's content identity the rows were made with
    backbones.json       what each model's weights are (``adapter.weights_note``)
    per_class_iou.csv    per-class IoUs, where a user supplies them (the report compares models class by class)
    heads/<model>/[<stage label>/]   saved heads, predictions on a few test images, artifacts
    figures/, REPORT.md  what ``analysis.report`` makes of it

A **sweep directory** (``results/<sweep>/``) has ``sweep.yaml``, its own merged ``results.csv`` and one run
directory per cell under ``cells/<cell>/``; shared ridge screens live under ``screens/<key>/``. Everything that
reads "all heads" or "all backbone notes" of a directory sees a sweep's cells too (:meth:`RunDir.runs`).

Written by hand: it is this project's own file layout; no library knows it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from probebench.core.errors import ProbebenchError
from probebench.core.io import atomic_write_bytes, atomic_write_json
from probebench.core.results import RESULTS_FILE, read_results

CONFIG_FILE = "config.yaml"
RUN_FILE = "run.json"  # the data identity the results were made with
BACKBONES_FILE = "backbones.json"  # what each model's weights are (e.g. how a random twin was initialised)
PER_CLASS_FILE = "per_class_iou.csv"
HEADS_DIR = "heads"
FIGURES_DIR = "figures"
CELLS_DIR = "cells"  # a sweep's cells: one run directory each
SCREENS_DIR = "screens"  # a sweep's shared ridge screens
SWEEP_FILE = "sweep.yaml"

# per-class IoU tables: the columns a table must have, and the defaults of the optional ones
PER_CLASS_REQUIRED = ("backbone", "weights", "probe", "class", "iou")
PER_CLASS_DEFAULTS: dict[str, Any] = {"task": "segmentation", "split": "test", "seed": 0}

ROLES = ("noise-control",)  # stage roles the analysis knows (``role:`` of a probe stage in the config)


def model_slug(backbone: str, weights: str) -> str:
    """``<backbone>-<weights>`` with characters other than letters, digits and ``._+=-`` replaced by ``_``: the
    name of a model's ``heads/`` directory."""
    return "".join(
        c if c.isascii() and (c.isalnum() or c in "._+=-") else "_" for c in f"{backbone}-{weights}"
    )


@dataclass(frozen=True)
class HeadsDir:
    """One model's saved heads: ``heads/<model>/`` (or ``heads/<model>/<stage label>/`` of a labelled stage) in
    the run directory ``run``; ``cell`` names the sweep cell it belongs to (``""`` for a run's own)."""

    path: Path
    cell: str = ""

    def json(self, stem: str) -> dict[str, Any]:
        """``<stem>.json`` (a head's or an artifact's metadata), ``{}`` when absent."""
        p = self.path / f"{stem}.json"
        return json.loads(p.read_text()) if p.is_file() else {}

    def model(self, stem: str) -> str:
        """``backbone (weights)`` of what ``<stem>.json`` describes (the directory name when it does not say)."""
        meta = self.json(stem)
        return f"{meta['backbone']} ({meta['weights']})" if "backbone" in meta else self.path.name


class RunDir:
    """A run's or a sweep's results directory (see the module docstring for the layout)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # -- files ------------------------------------------------------------------------------------------------
    @property
    def results_file(self) -> Path:
        return self.path / RESULTS_FILE

    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def run_file(self) -> Path:
        return self.path / RUN_FILE

    @property
    def figures_dir(self) -> Path:
        return self.path / FIGURES_DIR

    @property
    def is_sweep(self) -> bool:
        return (self.path / SWEEP_FILE).is_file()

    def sweep_name(self) -> str | None:
        """The sweep's name when this is a sweep directory (it holds ``sweep.yaml``), else None."""
        if not self.is_sweep:
            return None
        name = (yaml.safe_load((self.path / SWEEP_FILE).read_text()) or {}).get("name")
        return str(name) if name else self.path.name

    def has_results(self) -> bool:
        return self.results_file.is_file()

    def check_results(self, hint: str = "Run `probebench run` or `probebench fit` first.") -> None:
        """One clear error when the directory holds no result table."""
        if self.has_results():
            return
        if self.path.is_dir():
            listing = sorted(p.name for p in self.path.iterdir())
            raise ProbebenchError(
                f"{self.path} has no {RESULTS_FILE}; it holds: {listing or 'nothing (empty directory)'}. {hint}"
            )
        raise ProbebenchError(f"{self.path} does not exist. {hint}")

    # -- the sweep's cells ------------------------------------------------------------------------------------
    def cells(self) -> list[RunDir]:
        """A sweep's cell run directories (none for a run)."""
        return [RunDir(p) for p in sorted((self.path / CELLS_DIR).glob("*")) if p.is_dir()]

    def runs(self) -> list[RunDir]:
        """This directory and, for a sweep, each of its cells."""
        return [self, *self.cells()]

    def cell_name(self) -> str:
        """The sweep cell this run directory is (``…/cells/<cell>``), or ``""``."""
        return self.path.name if self.path.parent.name == CELLS_DIR else ""

    # -- rows -------------------------------------------------------------------------------------------------
    def read_results(self) -> pd.DataFrame:
        self.check_results()
        return read_results(self.results_file)

    # -- the config -------------------------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """The resolved config as written (a plain dict; ``{}`` when absent)."""
        p = self.config_file
        return (yaml.safe_load(p.read_text()) or {}) if p.is_file() else {}

    def stage_roles(self) -> dict[str, str]:
        """``{probe label in result rows: role}`` of every stage that declares a ``role`` (a sweep's cells
        included): how findings find controls, whatever the stage is labelled."""
        roles: dict[str, str] = {}
        for run in self.runs():
            for st in run.config().get("probes") or []:
                if isinstance(st, Mapping) and st.get("role"):
                    roles[str(st.get("label") or st.get("name"))] = str(st["role"])
        return roles

    # -- backbone notes ---------------------------------------------------------------------------------------
    def backbone_notes(self) -> dict[str, str]:
        """``{model label: what its weights are}`` from ``backbones.json`` (and a sweep's cells')."""
        notes: dict[str, str] = {}
        for run in self.runs():
            p = run.path / BACKBONES_FILE
            if p.is_file():
                notes.update({str(k): str(v) for k, v in json.loads(p.read_text()).items()})
        return notes

    def write_backbone_notes(self, notes: Mapping[str, str]) -> None:
        """Merge ``{model: weights note}`` into ``backbones.json`` (the report names the random control with
        it)."""
        path = self.path / BACKBONES_FILE
        have = json.loads(path.read_text()) if path.is_file() else {}
        merged = {**have, **{k: v for k, v in notes.items() if v}}
        if merged != have:
            atomic_write_json(path, merged)

    # -- heads ------------------------------------------------------------------------------------------------
    def heads_dir(self, backbone: str, weights: str, stage_label: str | None = None) -> Path:
        """Where a model's heads are saved (created): ``heads/<model slug>/``, or a labelled stage's own
        ``heads/<model slug>/<label>/`` (e.g. a noise control keeps its heads apart from the model's main ones)."""
        d = self.path / HEADS_DIR / model_slug(backbone, weights)
        if stage_label:
            d = d / stage_label
        d.mkdir(parents=True, exist_ok=True)
        return d

    def head_dirs(self) -> list[HeadsDir]:
        """Every model's saved-heads directory: ``heads/<model>/`` of the run and of each sweep cell."""
        found = []
        for run in self.runs():
            cell = run.cell_name()
            found += [HeadsDir(p, cell) for p in sorted((run.path / HEADS_DIR).glob("*")) if p.is_dir()]
        return found

    def import_heads(self, source: RunDir) -> None:
        """Copy ``source``'s saved heads into this directory (a sweep's shared screen into a cell), file by
        file, atomically."""
        heads = source.path / HEADS_DIR
        for f in sorted(heads.rglob("*")) if heads.is_dir() else []:
            if f.is_file() and not f.name.startswith("."):  # not a leftover temporary file
                atomic_write_bytes(self.path / HEADS_DIR / f.relative_to(heads), f.read_bytes())

    # -- per-class tables -------------------------------------------------------------------------------------
    def per_class_file(self) -> Path:
        return self.path / PER_CLASS_FILE

    def has_per_class_iou(self) -> bool:
        return any(run.per_class_file().is_file() for run in self.runs())

    def per_class_iou(self) -> pd.DataFrame:
        """Every per-class IoU row of the directory (a sweep's cells included)."""
        frames = [
            pd.read_csv(
                run.per_class_file(), dtype={"backbone": str, "weights": str, "probe": str, "class": str}
            )
            for run in self.runs()
            if run.per_class_file().is_file()
        ]
        if not frames:
            raise ProbebenchError(f"No {PER_CLASS_FILE} in {self.path} (nor in its sweep cells).")
        return pd.concat(frames, ignore_index=True)


def find_results_files(paths: Iterable[str | Path]) -> list[Path]:
    """``results.csv`` files: each path is a CSV, a run directory, or a directory of runs (a sweep)."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_file():
            found.append(p)
        elif (p / RESULTS_FILE).is_file():
            found.append(p / RESULTS_FILE)
        elif p.is_dir():
            sub = sorted(p.rglob(RESULTS_FILE))
            if not sub:
                listing = sorted(x.name for x in p.iterdir())[:20]
                raise ProbebenchError(
                    f"No {RESULTS_FILE} in {p} or below it; it holds: {listing or 'nothing (empty directory)'}."
                )
            found.extend(sub)
        else:
            raise ProbebenchError(f"{p} does not exist.")
    return found
