"""The probe contract (probes/base.py) on every registered probe, and ProbeOutput's save/load of its heads."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from _synthetic import synthetic_splits

from probebench.core.errors import ProbebenchError
from probes import PROBES, probe_class
from probes.base import FeatureSource, Probe, ProbeOutput
from probes.linear import linear_probe
from probes.screen import ridge_screen

NOT_A_PROBE_CLASS: dict[
    str, str
] = {}  # registered names exempt from the contract, each with the reason (none)


@pytest.mark.parametrize("name", [n for n in PROBES.names() if n not in NOT_A_PROBE_CLASS])
def test_every_registered_probe_follows_the_contract(name):
    cls = probe_class(name)
    assert issubclass(cls, Probe) and cls.name == name
    assert dataclasses.is_dataclass(cls.Params)
    for attr in ("trained", "per_cell", "needs_cache", "joint"):
        assert isinstance(getattr(cls, attr), bool), attr
    assert isinstance(cls.from_config({}).params, cls.Params)  # every parameter has a default
    first = cls.param_names()[0]
    with pytest.raises(ProbebenchError, match=rf"Unknown parameter '{first}x' for probe '{name}'.*Valid: "):
        cls.from_config({f"{first}x": 1})


def test_capabilities_are_declared_by_the_classes():
    assert [probe_class(n).trained for n in ("ridge", "ridge-stream", "linear", "fusion")] == [0, 0, 1, 1]
    assert (
        probe_class("ridge").per_cell
        and probe_class("linear").per_cell
        and not probe_class("fusion").per_cell
    )
    assert not probe_class("ridge-stream").needs_cache and probe_class("ridge-stream").rows_probe == "ridge"
    assert probe_class("fusion").rows_version == 2


def test_a_cached_split_is_a_feature_source(tmp_path):
    sp = synthetic_splits(tmp_path, [(1, 500), (2, 500)], signal=(2, 500), sizes={"train": 5, "val": 3})
    train = sp["train"]
    assert isinstance(train, FeatureSource) and train.hash == train.cache.hash
    batches = list(train.batches([(2, 500)], 2))
    assert [s for s, _ in batches] == [0, 2, 4]
    got = np.concatenate([b[(2, 500)] for _, b in batches])
    assert np.array_equal(got, train.cache.array((2, 500))[:]) and got.dtype == np.float16


def test_probe_output_saves_and_loads_its_heads(tmp_path):
    sp = synthetic_splits(tmp_path / "c", [(1, 500), (2, 0.25)], signal=(2, 0.25))
    kinds = ["segmentation", "depth"]
    ridge = ridge_screen(sp["train"], sp["val"], None, kinds, lambdas=[0.1, 1.0], progress=False)
    trained = linear_probe(
        sp["train"], sp["val"], None, ["depth"], keys=[(2, 0.25)], epochs=1, progress=False
    )
    trained.artifacts["weights/depth"] = np.arange(6, dtype=np.float32).reshape(2, 3)
    trained.artifact_meta["weights/depth"] = {"task": "depth", "axes": "a, b"}
    specs = {k: sp["train"].dataset.target_spec(k) for k in kinds}
    out = tmp_path / "heads"
    out.mkdir()
    ridge.save(out, backbone="b", weights="w", stage="ridge", specs=specs)
    trained.save(out, backbone="b", weights="w", stage="linear", specs=specs, probe_seed=3)

    back = ProbeOutput.load(out)
    assert set(back.best) == set(kinds)
    for kind, head in ridge.best.items():
        got = back.best[kind]
        assert (got.key, got.kind, got.lam, got.val_score) == (head.key, head.kind, head.lam, head.val_score)
        assert np.array_equal(got.coef, head.coef.astype(np.float32))
        assert np.array_equal(got.intercept, head.intercept.astype(np.float32))
    [(name, sd)] = list(trained.state_dicts.items())
    loaded = back.state_dicts[f"{name}#seed3"]
    assert all(torch.equal(loaded[k], v) for k, v in sd.items()) and set(loaded) == set(sd)
    assert np.array_equal(back.artifacts["weights_depth"], trained.artifacts["weights/depth"])
    assert back.artifact_meta["weights_depth"] == {"task": "depth", "axes": "a, b"}
    assert not ProbeOutput.load(
        out, stage="ridge"
    ).state_dicts  # the linear stage's state dict is not ridge's
