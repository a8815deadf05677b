from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from probebench.config import RunConfig, config_hash, load_config, to_dict
from probebench.core.errors import ProbebenchError

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


def test_a_stage_role_is_checked_and_changes_no_identity():
    cfg = load_config(None, ["probes.4.role=noise-control"])
    assert config_hash(load_config(None, ["probes.4.role=null"])) == config_hash(cfg)
    from probebench.pipeline import stage_hash

    plain = load_config(None, ["probes.4.role=null"])
    models = [cfg.backbones[i] for i in cfg.probes[4].backbones]
    data_id = {"train": {}, "val": {}, "test": {}}
    assert stage_hash(cfg, cfg.probes[4], models, data_id=data_id) == stage_hash(
        plain, plain.probes[4], models, data_id=data_id
    )
    with pytest.raises(ProbebenchError, match=r"unknown role 'noise-contrl'\. Did you mean 'noise-control'"):
        load_config(None, ["probes.4.role=noise-contrl"]).validate()


def test_probe_seeds_apply_to_trained_cached_probes_only():
    from probebench.config import ProbeConfig
    from probebench.pipeline import stage_seeds

    cfg = load_config(None, ["seed=7", "probe_seeds=[1, 2]"])
    assert stage_seeds(cfg, ProbeConfig("linear")) == [1, 2]
    assert stage_seeds(cfg, ProbeConfig("fusion")) == [1, 2]
    assert stage_seeds(cfg, ProbeConfig("ridge")) == [7]
    assert stage_seeds(cfg, ProbeConfig("ridge-stream")) == [7]
    assert stage_seeds(load_config(None, ["seed=7", "probe_seeds=null"]), ProbeConfig("linear")) == [7]


# -- dataset-specific keys, tasks from the dataset, cache dir from the environment -----------------------------
@pytest.fixture(scope="module")
def scenes_export(tmp_path_factory) -> Path:
    """A tiny scenes export in the ``folder`` layout (2/1/1 images at 16 px)."""
    from tasks.scenes import export_scenes

    root = tmp_path_factory.mktemp("export") / "scenes16"
    return export_scenes(root, {"train": 2, "val": 1, "test": 1}, resolution=16, progress=False)


def test_scene_options_never_reach_another_dataset(scenes_export, tmp_path):
    from probebench.pipeline import build_split

    # an override on the defaults: scenes' {resolution, seed} are dropped, the folder loads
    cfg = load_config(None, ["data.name=folder", f"data.root={scenes_export}"])
    assert (cfg.data.options, cfg.data.root) == ({}, str(scenes_export))
    assert len(build_split(cfg, "train")) == 2
    # options given with the new name in the same layer are the new dataset's, and only they
    cfg = load_config(None, ["data.options.fast=true", "data.name=folder"])
    assert cfg.data.options == {"fast": True}
    # the same dataset named again changes nothing else
    assert load_config(None, ["data.name=scenes"]).data.options == {"resolution": 64, "seed": 0}
    # a preset naming its dataset without options; then back to scenes by override: folder's root is dropped
    preset = tmp_path / "mine.yaml"
    preset.write_text(yaml.safe_dump({"data": {"name": "folder", "root": str(scenes_export)}}))
    cfg = load_config(preset)
    assert (cfg.data.name, cfg.data.options) == ("folder", {})
    assert len(build_split(cfg, "val")) == 1
    back = load_config(preset, ["data.name=scenes", "data.options.resolution=16"])
    assert (back.data.root, back.data.options) == (None, {"resolution": 16})
    assert len(build_split(back, "test")) == back.data.max_test
    # a preset naming its dataset and its options keeps them
    preset.write_text(yaml.safe_dump({"data": {"name": "scenes", "options": {"resolution": 24}}}))
    assert load_config(preset).data.options == {"resolution": 24}


def test_tasks_default_to_what_the_dataset_provides(scenes_export):
    import tasks
    from probebench.config import resolve_tasks

    assert RunConfig().tasks is None
    cfg = load_config(None, ["data.name=folder", f"data.root={scenes_export}"])
    meta = yaml.safe_load((scenes_export / "dataset.yaml").read_text())
    meta["targets"] = ["depth", "saliency"]  # declared in this order; the dataset lists them in its own
    (scenes_export / "dataset.yaml").write_text(yaml.safe_dump(meta))
    try:
        kinds = tasks.create("folder", split="train", root=scenes_export).targets
        assert resolve_tasks(cfg, kinds).tasks == list(kinds) == ["saliency", "depth"]
        explicit = load_config(None, ["tasks=[depth]"])
        assert resolve_tasks(explicit, kinds).tasks == ["depth"]
        with pytest.raises(ProbebenchError) as e:
            resolve_tasks(load_config(None, ["tasks=[depth, segmentation]"]), kinds)
        assert "'segmentation'" in str(e.value) and "It provides: saliency, depth" in str(e.value)
        with pytest.raises(ProbebenchError, match=r"'depht'.*Did you mean 'depth'"):
            resolve_tasks(load_config(None, ["tasks=[depht]"]), kinds)
        with pytest.raises(ProbebenchError, match="empty"):
            resolve_tasks(load_config(None, ["tasks=[]"]), kinds)
    finally:
        meta["targets"] = ["segmentation", "saliency", "depth"]
        (scenes_export / "dataset.yaml").write_text(yaml.safe_dump(meta))


def preset_files() -> list[Path]:
    return sorted((ROOT / "configs").glob("*.yaml")) + sorted((ROOT / "configs" / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("path", preset_files(), ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_presets_leave_the_cache_dir_to_probebench_cache(path, tmp_path, monkeypatch):
    from probebench.sweep import load_sweep

    monkeypatch.setenv("PROBEBENCH_CACHE", str(tmp_path / "env-cache"))
    if path.parent.name == "sweeps" and "generate" in (yaml.safe_load(path.read_text()) or {}):
        pytest.skip("a generation sweep: no feature cache (tests/test_generate_sweep.py loads it)")
    if path.parent.name == "sweeps":
        configs = [c.config for c in load_sweep(path, [f"output_dir={tmp_path}"]).cells]
    else:
        configs = [load_config(path)]
    assert {c.extract.cache_dir for c in configs} == {str(tmp_path / "env-cache")}
    for c in configs:  # and every preset's data options are its own dataset's
        assert c.data.name != "scenes" or set(c.data.options) <= {"resolution", "seed", "num_images"}
        assert c.data.name == "scenes" or "resolution" not in c.data.options
