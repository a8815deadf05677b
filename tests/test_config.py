from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from probebench.config import RunConfig, config_hash, load_config, to_dict
from probebench.errors import ProbebenchError

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_yaml_equals_the_embedded_defaults():
    from_file = load_config(ROOT / "configs" / "quickstart.yaml")
    assert to_dict(from_file) == to_dict(RunConfig())


def test_unknown_key_names_it_and_the_closest_valid_key():
    with pytest.raises(
        ProbebenchError, match=r"Unknown config key 'probes.0.nme'. Did you mean 'probes.0.name'"
    ):
        load_config(None, ["probes.0.nme=linear"])
    with pytest.raises(ProbebenchError, match=r"Unknown config key 'dat'. Did you mean 'data'"):
        load_config(None, ["dat.max_train=3"])


def test_unknown_key_in_a_yaml_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"data": {"max_trian": 3}}))
    with pytest.raises(ProbebenchError, match=r"'data\.max_trian'\. Did you mean 'data\.max_train'"):
        load_config(p)


def test_wrong_type_names_key_expected_type_and_value():
    with pytest.raises(ProbebenchError, match=r"'extract.batch_size' expects int, got 'many'"):
        load_config(None, ["extract.batch_size=many"])
    with pytest.raises(ProbebenchError, match=r"'data.options' expects a mapping"):
        load_config(None, ["data.options=3"])


def test_overrides_parse_yaml_values_and_list_indices():
    cfg = load_config(
        None,
        [
            "probes.0.params.lambdas=[0.5, 2]",
            "backbones.1.layers=[0,2]",
            "data.max_train=null",
            "backbones.0.weights=random",
            "probes.0.cells=[[1, null]]",
        ],
    )
    assert cfg.probes[0].params["lambdas"] == [0.5, 2]
    assert cfg.probes[0].cells == [[1, None]]
    assert cfg.backbones[1].layers == [0, 2]
    assert cfg.data.max_train is None
    assert cfg.backbones[0].weights == "random"
    with pytest.raises(ProbebenchError, match=r"list index in 0\.\.7"):
        load_config(None, ["backbones.9.layers=all"])
    with pytest.raises(ProbebenchError, match=r"key\.path=value"):
        load_config(None, ["probes.0.params"])


def test_yaml_file_then_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"name": "mine", "extract": {"batch_size": 7}}))
    cfg = load_config(p, ["extract.batch_size=9"])
    assert (cfg.name, cfg.extract.batch_size, cfg.data.name) == ("mine", 9, "scenes")
    with pytest.raises(ProbebenchError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_config_hash_ignores_runtime_only_fields_only():
    base = config_hash(load_config(None))
    assert config_hash(load_config(None, ["extract.batch_size=3", "output_dir=/elsewhere", "name=x"])) == base
    assert config_hash(load_config(None, ["seed=1"])) != base
    assert config_hash(load_config(None, ["probes.0.params.lambdas=[1.0]"])) != base


def test_probe_seeds_apply_to_trained_cached_probes_only():
    from probebench.config import ProbeConfig
    from probebench.pipeline import stage_seeds

    cfg = load_config(None, ["seed=7", "probe_seeds=[1, 2]"])
    assert stage_seeds(cfg, ProbeConfig("linear")) == [1, 2]
    assert stage_seeds(cfg, ProbeConfig("fusion")) == [1, 2]
    assert stage_seeds(cfg, ProbeConfig("ridge")) == [7]
    assert stage_seeds(cfg, ProbeConfig("ridge-stream")) == [7]
    assert stage_seeds(load_config(None, ["seed=7", "probe_seeds=null"]), ProbeConfig("linear")) == [7]
