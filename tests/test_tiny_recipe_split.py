"""The tiny MM-DiT's training recipe (``recipes/tiny_mmdit/``) stays outside the installed ``backbones`` package.

Building the ``tiny-mmdit`` adapter needs the architecture and the shipped weights only; the recipe imports the
installed architecture, never the other way round, and is not installed.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TRAINING = {"train", "sweep", "evaluate", "autoencoder"}  # the recipe's modules, by their last name


def training_modules(names: list[str]) -> list[str]:
    """The recipe's modules, or a training module inside ``backbones``, among module names."""
    return sorted(
        m
        for m in names
        if m.split(".")[0] == "recipes"
        or (m.split(".")[0] == "backbones" and m.rsplit(".", 1)[-1] in TRAINING)
    )


def test_creating_tiny_mmdit_imports_no_training_code() -> None:
    code = (
        "import json, sys\n"
        "import backbones\n"
        "adapter = backbones.create('tiny-mmdit')\n"
        "print(json.dumps({'name': adapter.name, 'modules': sorted(sys.modules)}))\n"
    )
    # run from the repository root, where ``recipes`` is importable: nothing may import it all the same
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["name"] == "tiny-mmdit"
    assert "backbones.tiny.model" in out["modules"]  # the architecture/loading module did the work
    assert training_modules(out["modules"]) == []


def test_backbones_never_imports_recipes() -> None:
    offenders = []
    for path in sorted((ROOT / "backbones").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            offenders += [
                f"{path.relative_to(ROOT)}:{node.lineno} {n}" for n in names if n.split(".")[0] == "recipes"
            ]
    assert offenders == []


def test_recipes_are_not_installed_and_the_weights_are() -> None:
    tomllib = pytest.importorskip("tomllib")
    from setuptools import find_packages

    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = find_packages(str(ROOT), include=setup["packages"]["find"]["include"])
    assert "backbones.tiny" in packages
    assert not [p for p in packages if p.split(".")[0] == "recipes"]
    shipped = setup["package-data"]["backbones.tiny"]
    weights = ROOT / "backbones" / "tiny"
    assert all(list(weights.glob(pattern)) for pattern in shipped)  # every pattern ships a file
    assert "weights/tiny_mmdit.safetensors" in shipped


def test_training_entry_point_runs_from_the_repository_root() -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "recipes.tiny_mmdit.train", "--help"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "--resume" in proc.stdout and "--vae" in proc.stdout
