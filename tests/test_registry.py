from __future__ import annotations

import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

import backbones
import probebench.core.registry as registry_module
import tasks
from probebench.core.errors import ProbebenchError, UnknownNameError, did_you_mean
from probebench.core.registry import DuplicateRegistrationError, Registry
from probes import PROBES

ROOT = Path(__file__).resolve().parents[1]


def test_unknown_name_suggests_closest_and_lists_available():
    with pytest.raises(UnknownNameError) as e:
        tasks.create("scenez")
    msg = str(e.value)
    assert "Unknown task 'scenez'" in msg
    assert "Did you mean: scenes" in msg
    assert "Available:" in msg and "voc2012" in msg


def test_unknown_backbone_lists_choices():
    with pytest.raises(UnknownNameError, match=r"Unknown backbone 'resnet'.*Available: .*timm:<name>"):
        backbones.create("resnet")


def test_prefix_family_serves_any_suffix_but_not_the_bare_prefix():
    assert "timm:efficientnet_lite0" in backbones.BACKBONES
    assert "timm:" not in backbones.BACKBONES


def test_decorator_lazy_and_duplicate_registration():
    reg = Registry("widget")

    @reg.register("a", kind="k", source="s", notes="n")
    def make_a():
        return "A"

    reg.register("lazy", "os.path:join", kind="lazy")
    assert reg.get("a") is make_a
    import os.path

    assert reg.get("lazy") is os.path.join
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a", lambda: None)
    rows = reg.table()
    assert rows[0] == {"name": "a", "kind": "k", "source": "s", "notes": "n"}
    assert reg.names() == ["a", "lazy"]


def test_entry_point_plugins_are_discovered(monkeypatch):
    ep = SimpleNamespace(name="plugin-backbone", value="os.path:basename")
    monkeypatch.setattr(
        registry_module, "entry_points", lambda group: [ep] if group == "probebench.backbones" else []
    )
    reg = Registry("backbone", group="probebench.backbones")
    import os.path

    assert reg.get("plugin-backbone") is os.path.basename
    assert "plugin-backbone" in reg.names()


def test_broken_lazy_entry_gives_clear_error():
    reg = Registry("widget")
    reg.register("broken", "no_such_module_xyz:thing")
    with pytest.raises(ProbebenchError, match="no_such_module_xyz") as e:
        reg.get("broken")
    assert str(e.value).startswith("Could not load 'broken' from 'no_such_module_xyz:thing'")
    assert "ModuleNotFoundError: No module named 'no_such_module_xyz'" in str(e.value)
    reg.register("no-attr", "os.path:no_such_function")
    with pytest.raises(ProbebenchError, match=r"path\.py has no attribute 'no_such_function'"):
        reg.get("no-attr")


def test_a_lazy_entry_whose_module_fails_names_the_file_and_line(tmp_path, monkeypatch):
    (tmp_path / "broken_plugin_mod.py").write_text("import os\n\nx = 1 / 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry("widget")
    reg.register("broken", "broken_plugin_mod:thing")
    with pytest.raises(ProbebenchError) as e:
        reg.get("broken")
    msg = str(e.value)
    assert f"{tmp_path / 'broken_plugin_mod.py'}, line 3: ZeroDivisionError: division by zero" in msg
    assert len(msg.splitlines()) == 1


# ------------------------------------------------------------------------ one name, several registrations


def make_b():
    return "B"


def test_the_same_object_twice_is_fine_two_objects_are_an_error_naming_both():
    reg = Registry("widget")
    reg.register("b", make_b, kind="first")
    reg.register("b", make_b, kind="again")  # e.g. a module imported by a plugin and by an entry point
    assert reg.get("b") is make_b and reg.entry("b").kind == "again"

    def other():
        return "other"

    with pytest.raises(DuplicateRegistrationError) as e:
        reg.register("b", other)
    msg = str(e.value)
    assert msg.startswith(f"widget 'b' is already registered to {__name__}:make_b; cannot also register ")
    assert "<locals>.other" in msg and "override=True" in msg
    assert isinstance(e.value, ValueError) and isinstance(e.value, ProbebenchError)
    reg.register("b", other, override=True)
    assert reg.get("b") is other


def test_a_lazy_reference_and_the_object_it_names_are_one_registration():
    ref = f"{__name__}:make_b"
    reg = Registry("widget")
    reg.register("b", ref)  # lazy first (an entry point), then the decorator
    reg.register("b", make_b, kind="decorated")
    assert reg.get("b") is make_b and reg.entry("b").kind == "decorated"
    reg2 = Registry("widget")
    reg2.register("b", make_b, kind="decorated")  # decorator first, then the lazy reference
    reg2.register("b", ref, kind="plugin")
    assert reg2.get("b") is make_b and reg2.entry("b").kind == "decorated"


def test_a_lazy_reference_to_another_object_fails_on_use_naming_both():
    reg = Registry("widget")
    reg.register("b", make_b)
    reg.register("b", "os.path:join")  # cannot be resolved at registration time: checked on first use
    reg.register(
        "c", "os.path:join"
    )  # and the other order: an entry point first, then another decorated object
    reg.register("c", make_b)
    with pytest.raises(
        DuplicateRegistrationError, match=rf"{__name__}:make_b; cannot also register posixpath:join"
    ):
        reg.get("c")
    with pytest.raises(
        DuplicateRegistrationError, match=rf"{__name__}:make_b; cannot also register posixpath:join"
    ):
        reg.get("b")


def test_a_reloaded_module_re_registers_without_error(tmp_path, monkeypatch):
    import importlib

    (tmp_path / "reloaded_plugin_mod.py").write_text(
        "from backbones import BACKBONES\n\n\n"
        "@BACKBONES.register('reloaded-test-backbone')\ndef create(name, **kw):\n    return name\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    saved = dict(backbones.BACKBONES._entries)
    try:
        mod = importlib.import_module("reloaded_plugin_mod")
        first = mod.create
        mod = importlib.reload(mod)
        assert mod.create is not first and backbones.BACKBONES.get("reloaded-test-backbone") is mod.create
    finally:
        backbones.BACKBONES._entries.clear()
        backbones.BACKBONES._entries.update(saved)
        sys.modules.pop("reloaded_plugin_mod", None)


# ------------------------------------------------------------------------ the README recipe, as written


def readme_recipe() -> tuple[str, dict[str, str]]:
    """The README's "Adding a backbone" decorator code and its entry points (name → "module:attr")."""
    section = (ROOT / "README.md").read_text().split("## Adding a backbone", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    toml = re.search(r"```toml\n(.*?)```", section, re.S)
    assert code and toml, "the section needs a python and a toml code block"
    group = toml.group(1).split('[project.entry-points."probebench.backbones"]', 1)[1].split("\n[", 1)[0]
    eps = dict(re.findall(r'^\s*"?([\w.\-]+)"?\s*=\s*"([^"]+)"', group, re.M))
    assert eps, toml.group(1)
    return code.group(1), eps


@pytest.fixture
def readme_distribution(tmp_path, monkeypatch):
    """A throwaway installed distribution: the README's code as the module its entry point names, and a
    ``*.dist-info/entry_points.txt`` on sys.path, so importlib.metadata discovers it as pip would install it."""
    code, eps = readme_recipe()
    name, value = next(iter(eps.items()))
    module = value.split(":")[0]
    path = tmp_path.joinpath(*module.split(".")).with_suffix(".py")
    path.parent.mkdir(parents=True, exist_ok=True)
    for parent in path.relative_to(tmp_path).parents:
        if parent != Path("."):
            (tmp_path / parent / "__init__.py").touch()
    path.write_text(code)
    dist = tmp_path / "my_readme_package-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-readme-package\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[probebench.backbones]\n{name} = {value}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = backbones.BACKBONES
    saved = dict(reg._entries), reg._plugins_loaded
    reg._plugins_loaded = False  # discover entry points again, now with the throwaway distribution
    top = module.split(".")[0]
    yield name, value
    reg._entries.clear()
    reg._entries.update(saved[0])
    reg._plugins_loaded = saved[1]
    for mod in [m for m in sys.modules if m == top or m.startswith(top + ".")]:
        del sys.modules[mod]


def test_readme_recipe_decorator_plus_entry_point_works_as_written(readme_distribution):
    """Entry point discovered first, then its module imported: the decorator registers the same factory."""
    name, value = readme_distribution
    entry = backbones.BACKBONES.entry(name)
    assert entry.kind == "plugin" and "my-readme-package 0.1" in entry.origin
    factory = backbones.BACKBONES.get(name)  # used to raise "backbone 'my-model' is already registered"
    module, attr = value.split(":")
    assert factory is getattr(sys.modules[module], attr)
    assert backbones.BACKBONES.entry(name).kind != "plugin"  # the decorator's metadata wins
    assert backbones.BACKBONES.names().count(name) == 1


def test_readme_recipe_module_imported_before_the_lookup(readme_distribution):
    """The user's own import (or --plugin) runs the decorator before the entry points are read."""
    import importlib

    name, value = readme_distribution
    module, attr = value.split(":")
    factory = getattr(importlib.import_module(module), attr)
    assert backbones.BACKBONES.get(name) is factory
    assert backbones.BACKBONES.names().count(name) == 1


def test_registries_have_the_foundation_entries():
    assert "scenes" in tasks.TASKS.names()
    assert "ridge" in PROBES.names()
    assert "timm:<name>" in backbones.list_backbones()


def test_did_you_mean_is_case_insensitive():
    assert did_you_mean("RIDGE", ["ridge", "linear"]) == ["ridge"]
    assert did_you_mean("zzzz", ["ridge", "linear"]) == []
