"""Writing a dataset in the ``folder`` layout, the form ``probebench run`` reads back (``data.name: folder``).

``ROOT/dataset.yaml`` and ``ROOT/<split>/images/<id>.png`` plus one subfolder per target kind; every target is
written by its kind (:meth:`~tasks.kinds.TargetKind.write_target`, the inverse of its ``read_target``) and the
label space by its kind's :meth:`~tasks.kinds.TargetKind.meta_from_spec`, so an exported or generated dataset
holds exactly what the loader returns. Used by ``probebench scenes export``; generated datasets are next.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

from probebench.core.errors import ProbebenchError
from probebench.core.io import atomic_write_bytes
from tasks.base import TargetSpec
from tasks.loaders import target_folder

META_FILE = "dataset.yaml"


def write_sample(
    root: Path,
    split: str,
    image_id: str,
    rgb01: np.ndarray,
    targets: Mapping[str, np.ndarray],
    specs: Mapping[str, TargetSpec],
) -> None:
    """One image ((H, W, 3) in [0, 1]) and its targets (by kind name, as the loader returns them)."""
    base = Path(root) / split
    image = base / "images" / f"{image_id}.png"
    image.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(np.clip(rgb01, 0.0, 1.0) * 255).astype(np.uint8)).save(image)
    for kind_name, target in targets.items():
        spec = specs[kind_name]
        kind = spec.target_kind
        kind.write_target(base / target_folder(kind) / f"{image_id}.png", target, spec)


def write_meta(root: Path, name: str, specs: Mapping[str, TargetSpec], source: Mapping[str, Any]) -> Path:
    """``dataset.yaml``: the name, each kind's label-space keys, the target kinds and the provenance
    (``source``); written last, so a folder without it is not yet a dataset."""
    meta: dict[str, Any] = {"name": name}
    for kind_name, spec in specs.items():
        for key, value in spec.target_kind.meta_from_spec(spec).items():
            if key in meta and meta[key] != value:
                raise ProbebenchError(
                    f"{kind_name} and another target kind disagree on {key!r} in {META_FILE}."
                )
            meta[key] = value
    meta.update(targets=list(specs), source=dict(source))
    path = Path(root) / META_FILE
    atomic_write_bytes(path, yaml.safe_dump(meta, sort_keys=False).encode())  # it marks the folder complete
    return path
