"""``probebench generate`` through the same code path on other families than tiny-mmdit: a small run's fusion heads
on a random tiny FLUX (flow, packed latents) and a random tiny DiT (DDPM timesteps, class ids as prompts) become a
bundle, and generation writes a folder dataset whose provenance names the family's sampler."""

from __future__ import annotations

import pytest
import yaml

from probebench.bundles import export_bundle
from probebench.config import load_config
from probebench.core.errors import ProbebenchError
from probebench.generate import GenerateConfig, generate
from probebench.pipeline import run

pytestmark = pytest.mark.usefixtures("one_thread")

CASES = {
    "flux.1-schnell": ("[0.0, 0.5]", [""], "FluxPipeline"),
    "dit-xl-2-256": ("[0, 300]", ["207", ""], "DiTPipelineWithSchedule"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_generation_on_another_family(name, tmp_path):
    timesteps, prompts, sampler = CASES[name]
    cfg = load_config(
        None,
        [
            "data.max_train=8",
            "data.max_val=4",
            "data.max_test=4",
            "data.options={resolution: 32, seed: 0}",
            "probe_seeds=[0]",
            "tasks=[segmentation, depth]",
            f"backbones=[{{name: {name}, weights: random, image_size: null, options: {{config: tiny}}, "
            f"layers: [0, 1], timesteps: {timesteps}}}]",
            "probes=[{name: ridge, params: {lambdas: [1.0]}}, "
            "{name: fusion, cells: best-layer, params: {mode: spatial, epochs: 1, patience: 0, width: 8}}]",
            f"extract.cache_dir={tmp_path / 'cache'}",
            f"output_dir={tmp_path / 'results'}",
            "name=fam",
        ],
    )
    bundle = export_bundle(run(cfg, progress=False), tmp_path / "bundle")
    out = generate(
        GenerateConfig(
            str(bundle), str(tmp_path / "gen"), num_samples=2, prompts=prompts, steps=3, batch_size=2
        ),
        progress=False,
    )
    src = yaml.safe_load((out / "dataset.yaml").read_text())["source"]
    assert src["backbone"] == name and src["sampler"].endswith(sampler)
    assert len(list((out / "train" / "depth").glob("*.png"))) == 2
    if name.startswith("dit"):
        with pytest.raises(
            ProbebenchError, match=r"class-conditional: a prompt must be an ImageNet class id"
        ):
            generate(
                GenerateConfig(str(bundle), str(tmp_path / "bad"), num_samples=1, prompts=["a cat"], steps=3)
            )
