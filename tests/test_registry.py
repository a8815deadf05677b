from __future__ import annotations

from types import SimpleNamespace

import pytest

import backbones
import probebench.registry as registry_module
import tasks
from probebench.errors import UnknownNameError, did_you_mean
from probebench.registry import Registry
from probes import PROBES


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
    with pytest.raises(Exception, match="no_such_module_xyz"):
        reg.get("broken")


def test_registries_have_the_foundation_entries():
    assert "scenes" in tasks.TASKS.names()
    assert "ridge" in PROBES.names()
    assert "timm:<name>" in backbones.list_backbones()


def test_did_you_mean_is_case_insensitive():
    assert did_you_mean("RIDGE", ["ridge", "linear"]) == ["ridge"]
    assert did_you_mean("zzzz", ["ridge", "linear"]) == []
