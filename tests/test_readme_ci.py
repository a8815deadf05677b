"""The README's Quick start and .ci/run must run the same install and test commands."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def quick_start_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```(?:bash|sh)?\n(.*?)```", section, re.S)
    assert block, "the Quick start section needs a fenced code block"
    return [ln.strip() for ln in block.group(1).splitlines() if ln.strip() and not ln.strip().startswith("#")]


def ci_lines() -> list[str]:
    return [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()]


def test_quick_start_is_install_run_test():
    cmds = quick_start_commands()
    assert len(cmds) == 3, cmds
    install, run, test = cmds
    assert install.startswith("pip install") and run == "probebench run" and test.startswith("pytest")


def test_ci_runs_the_readme_install_and_test_verbatim():
    install, _, test = quick_start_commands()
    lines = ci_lines()
    assert install in lines and test in lines
    assert lines.index(install) < lines.index(test)


def test_ci_uses_a_fresh_venv_offline():
    text = (ROOT / ".ci" / "run").read_text()
    assert "python3 -m venv" in text and "mktemp -d" in text
    assert "HF_HUB_OFFLINE=1" in text and "MPLBACKEND=Agg" in text
    assert "set -euo pipefail" in text  # pytest's exit code 5 (no tests) fails CI
    # the ~6 GB venv goes away on exit, pass or fail (every run used to leave one in /tmp until the disk filled)
    assert "trap '" in text and 'rm -rf "$WORK"\' EXIT' in text and 'VENV="$WORK/venv"' in text
