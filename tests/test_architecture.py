"""The shape of the code, checked: dependencies point one way, the ground floor imports no stage, no stage
imports the top floor, and no module tells target kinds or probes apart by name outside its own module."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# what each package may import from this project (besides itself); function-local imports count too
ALLOWED = {
    "probebench.core": set(),
    "tasks": {"probebench.core"},
    "backbones": {"probebench.core", "tasks"},
    "probes": {"probebench.core", "tasks", "backbones"},
    "analysis": {"probebench.core", "tasks", "backbones", "probes"},
}
PROJECT = ("probebench", "tasks", "backbones", "probes", "analysis", "recipes")


def _package(module: str) -> str | None:
    if module == "probebench.core" or module.startswith("probebench.core."):
        return "probebench.core"
    top = module.split(".")[0]
    return top if top in PROJECT else None


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package.replace(".", "/")).rglob("*.py"))


def _imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.append((node.lineno, node.module))
            if node.module == "probebench":  # from probebench import x: x is the module imported
                out += [(node.lineno, f"probebench.{a.name}") for a in node.names]
    return out


@pytest.mark.parametrize("package", list(ALLOWED))
def test_dependencies_point_one_way(package):
    bad = []
    for path in _modules(package):
        for line, module in _imports(path):
            target = _package(module)
            if target is None or target == package:
                continue
            if target not in ALLOWED[package] or module == "probebench":
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not bad, "\n".join(bad)


def test_installed_code_imports_no_recipe():
    bad = [
        f"{p.relative_to(ROOT)}:{line}"
        for pkg in ("probebench", "tasks", "backbones", "probes", "analysis")
        for p in _modules(pkg)
        for line, module in _imports(p)
        if module.split(".")[0] == "recipes"
    ]
    assert not bad


KIND_NAME = r"""["'](segmentation|saliency|depth)["']"""
KIND_BRANCH = [
    re.compile(r"(==|!=|\bin\b)\s*[\(\[\{]?\s*" + KIND_NAME),  # kind == "depth", kind in ("segmentation", …)
    re.compile(KIND_NAME + r"\s*(==|!=|:)"),  # "depth" == kind, {"segmentation": …} lookup tables
    re.compile(r"spec\.kind\s*(==|!=|\bin\b)"),
]
PROBE_NAME = r"""["'](ridge|linear|fusion|head|combine|ridge-stream)["']"""
PROBE_TEST = re.compile(r"(==|!=)\s*" + PROBE_NAME + "|" + PROBE_NAME + r"\s*(==|!=)")


def _offending(packages: tuple[str, ...], patterns: list[re.Pattern[str]], allowed: tuple[str, ...] = ()):
    bad = []
    for pkg in packages:
        for p in _modules(pkg):
            rel = str(p.relative_to(ROOT))
            if rel.startswith(allowed):
                continue
            for i, text in enumerate(p.read_text().splitlines(), 1):
                code = text.split("#")[0]
                if any(pat.search(code) for pat in patterns):
                    bad.append(f"{rel}:{i}: {text.strip()}")
    return bad


def test_no_target_kind_branches_outside_the_kinds():
    """Only ``tasks/`` (the kinds and the datasets that provide them) tells segmentation, saliency and depth
    apart; probes and analysis ask the kind object."""
    bad = _offending(("probes", "analysis", "probebench"), KIND_BRANCH)
    assert not bad, "\n".join(bad)


def test_no_probe_name_tested_outside_its_module():
    """The pipeline and the analysis read what a probe can do from its class, never from its name."""
    bad = _offending(("analysis", "probebench"), [PROBE_TEST])
    assert not bad, "\n".join(bad)
