"""Single-file plugins: ``--plugin FILE.py`` and ``$PROBEBENCH_PLUGINS`` register backbones (and tasks, probes)
without packaging; a broken plugin is ONE error naming its file and line."""

from __future__ import annotations

import os
import sys
import textwrap

import pytest

import backbones
import probebench.core.plugins as plugins
import tasks
from probebench.cli import main
from probebench.core.errors import ProbebenchError

PLUGIN = """\
from backbones import BACKBONES
from tasks import TASKS


@BACKBONES.register("{name}", kind="test plugin", source="tmp", notes="from a single file")
def create(name, weights="default", device=None, dtype=None, **kwargs):
    return name


@TASKS.register("{name}-task", kind="test plugin")
def make_task(split="train", **options):
    return split
"""


@pytest.fixture(autouse=True)
def _isolated(isolated_registries):
    """Every test here registers plugins: the conftest fixture restores the registries afterwards."""
    yield


def write(path, text: str):
    path.write_text(textwrap.dedent(text))
    return path


def test_a_plugin_file_registers_backbones_and_tasks_and_loads_once(tmp_path):
    runs = tmp_path / "runs.txt"
    p = write(
        tmp_path / "my_plugin.py", PLUGIN.format(name="plugin-a") + f"open({str(runs)!r}, 'a').write('x')\n"
    )
    module = plugins.load_plugin(str(p))
    assert backbones.BACKBONES.get("plugin-a") is module.create
    assert tasks.create("plugin-a-task", split="val") == "val"
    assert backbones.BACKBONES.entry("plugin-a").notes == "from a single file"
    # idempotent: the same file (also through another spelling of its path) is not run again
    again = plugins.load_plugin(str(tmp_path / "." / "my_plugin.py"))
    assert again is module
    assert plugins.load_plugins([str(p), str(p)]) == [module, module]
    assert runs.read_text() == "x"  # executed once


def test_a_syntax_error_names_the_file_and_line(tmp_path):
    p = write(tmp_path / "bad_syntax.py", "import os\n\n\ndef f(:\n    pass\n")
    with pytest.raises(ProbebenchError) as e:
        plugins.load_plugin(str(p))
    msg = str(e.value)
    assert msg.startswith(f"Plugin {p} (--plugin) failed to import: {p}, line 4: SyntaxError: ")
    assert "def f(:" in msg and len(msg.splitlines()) == 1
    assert not any(m.startswith("probebench_plugin_bad_syntax") for m in sys.modules)


def test_an_import_error_names_the_plugin_line_and_the_original_message(tmp_path):
    p = write(tmp_path / "bad_import.py", "import os\nimport no_such_dependency_xyz\n")
    with pytest.raises(ProbebenchError) as e:
        plugins.load_plugin(str(p))
    assert str(e.value) == (
        f"Plugin {p} (--plugin) failed to import: {p}, line 2: "
        "ModuleNotFoundError: No module named 'no_such_dependency_xyz'"
    )


def test_an_error_raised_deeper_names_the_plugin_line_and_where_it_was_raised(tmp_path):
    write(tmp_path / "plugin_helper_xyz.py", "def boom():\n    raise RuntimeError('helper failed')\n")
    p = write(
        tmp_path / "deep.py",
        f"import sys\nsys.path.insert(0, {str(tmp_path)!r})\nimport plugin_helper_xyz\n\nplugin_helper_xyz.boom()\n",
    )
    try:
        with pytest.raises(ProbebenchError) as e:
            plugins.load_plugin(str(p))
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("plugin_helper_xyz", None)
    assert str(e.value).endswith(
        f"{p}, line 5 (raised in {tmp_path / 'plugin_helper_xyz.py'}, line 2): RuntimeError: helper failed"
    )


def test_missing_files_and_modules_are_named(tmp_path):
    with pytest.raises(ProbebenchError, match=rf"Plugin file not found: {tmp_path / 'nope.py'} \(--plugin\)"):
        plugins.load_plugin(str(tmp_path / "nope.py"))
    with pytest.raises(ProbebenchError, match=r"is not a \.py file"):
        plugins.load_plugin(str(tmp_path))
    with pytest.raises(
        ProbebenchError, match=r"Plugin module 'no_such_plugin_pkg\.mod' \(PROBEBENCH_PLUGINS\) not found"
    ):
        plugins.load_plugin("no_such_plugin_pkg.mod", origin="PROBEBENCH_PLUGINS")


def test_probebench_plugins_env_files_and_module_names(tmp_path, monkeypatch):
    a = write(tmp_path / "env_a.py", PLUGIN.format(name="env-a"))
    write(tmp_path / "env_module_b.py", PLUGIN.format(name="env-b"))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(plugins.ENV_VAR, os.pathsep.join([str(a), "", "env_module_b"]))
    try:
        names = backbones.list_backbones()  # any registry lookup loads them
        assert {"env-a", "env-b"} <= set(names) and "env-a-task" in tasks.TASKS.names()
        assert backbones.BACKBONES.get("env-b") is sys.modules["env_module_b"].create
    finally:
        sys.modules.pop("env_module_b", None)


def test_a_broken_env_plugin_is_one_error_on_lookup(tmp_path, monkeypatch):
    p = write(tmp_path / "env_broken.py", "x = undefined_name\n")
    monkeypatch.setenv(plugins.ENV_VAR, str(p))
    with pytest.raises(ProbebenchError) as e:
        backbones.list_backbones()
    assert str(e.value) == (
        f"Plugin {p} (PROBEBENCH_PLUGINS) failed to import: {p}, line 1: "
        "NameError: name 'undefined_name' is not defined"
    )


@pytest.mark.parametrize("where", ["before", "after"])
def test_cli_plugin_before_or_after_the_subcommand(tmp_path, where, capsys):
    p1 = write(tmp_path / "cli_one.py", PLUGIN.format(name="cli-one"))
    p2 = write(tmp_path / "cli_two.py", PLUGIN.format(name="cli-two"))
    argv = (
        ["--plugin", str(p1), "list", "backbones", "--plugin", str(p2)]
        if where == "after"
        else ["--plugin", str(p1), "--plugin", str(p2), "list", "backbones"]
    )
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "cli-one" in out and "cli-two" in out and "from a single file" in out
    # child processes (sweep workers, torchrun ranks) find them through the environment
    assert plugins.env_plugins() == [str(p1.resolve()), str(p2.resolve())]


def test_cli_broken_plugin_is_one_line_exit_2(tmp_path, capsys):
    p = write(tmp_path / "cli_broken.py", "import os\nraise ValueError('bad plugin')\n")
    assert main(["list", "backbones", "--plugin", str(p)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"probebench: error: Plugin {p} (--plugin) failed to import: {p}, line 2: ValueError: bad plugin"
    ]
