"""probebench: feature-probing benchmarks for frozen vision backbones (diffusion transformers, DINOv3, timm).

Stages live in the top-level packages ``tasks``, ``backbones``, ``probes`` and ``analysis``. This package holds
the ground floor every stage may import (``probebench.core``: errors, io, registry, plugins, the result schema
and the run-directory layout) and the top floor that wires the stages (``cli``, ``config``, ``pipeline``,
``sweep``), which no stage imports. The notebook API (:mod:`probebench.api`) is importable from here:
``probebench.run``, ``probebench.load_results``, ``probebench.figures``, ``probebench.export_bundle``
(generation itself: ``from probebench.generate import GenerateConfig, generate``). Imports are lazy, so that a stage
importing ``probebench.core`` loads nothing of the top floor.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "run": "api",
    "load_results": "api",
    "make_config": "api",
    "RunResult": "api",
    "export_bundle": "api",
}
__all__ = [
    "RunResult",
    "__version__",
    "export_bundle",
    "figures",
    "load_results",
    "make_config",
    "run",
]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(f"probebench.{_API[name]}"), name)
    if name == "figures":
        return importlib.import_module("analysis.figures")
    raise AttributeError(f"module 'probebench' has no attribute {name!r}")
