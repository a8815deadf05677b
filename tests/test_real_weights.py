"""The real-weights code path, offline: every registered pretrained backbone loaded from a miniature snapshot.

Real weights cannot be downloaded here, in CI or on the GPU machine, so each registered repo is stood in for by
a miniature (:mod:`miniature`: tiny random models in the repo's exact layout) in a throwaway Hugging Face cache,
and ``weights="default"`` (the HF cache) and ``weights=<folder>`` go through the same loaders as real weights:
diffusers ``from_pretrained`` of the transformer and VAE, the pipeline's own text encoders and tokenizers, and
timm's hub files. Parametrized over the registry: a new backbone is tested here or excluded with a reason.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from miniature import COMMIT, MiniatureHub, family_of, redirect_hf_home

import backbones
import probebench
from backbones.diffusion import DIFFUSION_SPECS
from backbones.dinov3 import MODELS as DINOV3_MODELS
from probebench.cli import main
from probebench.core.errors import ProbebenchError

EXCLUDE = {
    "tiny-mmdit": "ships its trained weights in the package (backbones/tiny/): no Hugging Face repo to stand in for",
    "timm:<name>": "a pattern, not one repo; its packaged EfficientNet-Lite0 weights are tested in test_timm_backbone",
    **{
        name: "timm builds the full-size architecture, so a miniature is a full-size random model "
        f"({DINOV3_MODELS[name][2]} wide, {DINOV3_MODELS[name][1]} blocks): too large for a test; the loading code "
        "is the one dinov3-vits16 runs"
        for name in (
            "dinov3-vits16plus",
            "dinov3-vitb16",
            "dinov3-vitl16",
            "dinov3-vith16plus",
            "dinov3-vit7b16",
        )
    },
}
NAMES = [n for n in backbones.list_backbones() if n not in EXCLUDE]
TEXT_NAMES = [n for n in NAMES if n in DIFFUSION_SPECS and DIFFUSION_SPECS[n][0].text is not None]
# the CLI and a whole run, for one backbone per family
ONE_PER_FAMILY = [
    "dit-xl-2-256",
    "sd3-medium",
    "flux.1-dev",
    "pixart-alpha-1024",
    "sana-1600m-1024",
    "dinov3-vits16",
]


def _params(names: list[str]) -> list:
    """``names`` as parameters; full-size DINOv3 miniatures (seconds per model) are marked slow."""
    return [pytest.param(n, marks=pytest.mark.slow) if family_of(n) == "dinov3" else n for n in names]


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> MiniatureHub:
    """A throwaway HF_HOME (offline) holding the miniatures, and probebench's caches in temporary folders."""
    root = tmp_path_factory.mktemp("miniature")
    mp = pytest.MonkeyPatch()
    cache = redirect_hf_home(mp, root / "hf_home")
    mp.setenv("PROBEBENCH_PROMPT_CACHE", str(root / "prompts"))
    mp.setenv("PROBEBENCH_CACHE", str(root / "features"))
    yield MiniatureHub(root, cache)
    mp.undo()


def _size(name: str) -> int:
    """The smallest legal input size: 64 px, Sana's DC-AE (32× down) needs 128."""
    return DIFFUSION_SPECS[name][0].tiny_image_size if name in DIFFUSION_SPECS else 64


def _width(name: str) -> int:
    if name in DIFFUSION_SPECS:
        cfg = DIFFUSION_SPECS[name][0].tiny_transformer_config
        return cfg["num_attention_heads"] * cfg["attention_head_dim"]
    return DINOV3_MODELS[name][2]


def _timesteps(name: str) -> list[float] | None:
    """One native timestep (DDPM t, flow σ) for a diffusion backbone, None for the others."""
    if name not in DIFFUSION_SPECS:
        return None
    return [100] if DIFFUSION_SPECS[name][0].convention == "ddpm" else [0.5]


def test_excluded_names_are_registered():
    registered = set(backbones.list_backbones())
    assert set(EXCLUDE) <= registered, sorted(set(EXCLUDE) - registered)


def test_a_family_without_a_builder_is_a_clear_error(hub):
    with pytest.raises(ProbebenchError, match="no miniature builder for 'tiny-mmdit'"):
        hub.folder("tiny-mmdit")


@pytest.mark.parametrize("name", _params(NAMES))
def test_default_and_folder_weights_load_the_snapshot(hub, name):
    folder = hub.folder(name)
    snap = hub.snapshot(name)
    files = [p for p in snap.rglob("*") if not p.is_dir()]
    assert files and all(p.is_symlink() and p.resolve().parent.name == "blobs" for p in files)
    size = _size(name)
    default = backbones.create(name, weights="default", image_size=size)
    local = backbones.create(name, weights=str(folder), image_size=size)
    random = backbones.create(
        name, weights="random", image_size=size, **({"config": "tiny"} if name in DIFFUSION_SPECS else {})
    )
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    feats = {
        w: a.extract(x, layers=[0, -1], timesteps=_timesteps(name))
        for w, a in (("default", default), ("local", local), ("random", random))
    }
    for key, f in feats["default"].items():
        assert f.shape[:2] == (2, _width(name)) and torch.isfinite(f).all(), key
        assert torch.equal(f, feats["local"][key]), (
            f"{key}: the cache snapshot and the folder are the same weights"
        )
        assert not torch.allclose(f, feats["random"][key]), key
    ids = {default.weights_id, local.weights_id, random.weights_id}
    assert len(ids) == 3, ids
    assert default.weights_id.startswith("hf:") and (
        COMMIT in default.weights_id or name not in DIFFUSION_SPECS
    )
    fps = [a.fingerprint() for a in (default, local, random)]
    assert fps[0] != fps[1] and fps[0] != fps[2] and fps[1] != fps[2]


def _pipeline_text(name: str, pipe, text) -> tuple:
    """The pipeline's own ``encode_prompt("")``, called as the family's adapter calls it."""
    family = family_of(name)
    with torch.inference_mode():
        if family == "sd3":
            embeds, _, pooled, _ = pipe.encode_prompt(
                prompt="",
                prompt_2="",
                prompt_3="",
                do_classifier_free_guidance=False,
                max_sequence_length=text.seq_len - 77,
            )
            return embeds, pooled, None
        if family == "flux":
            embeds, pooled, _ = pipe.encode_prompt(prompt="", prompt_2="", max_sequence_length=text.seq_len)
            return embeds, pooled, None
        extra = {"complex_human_instruction": None} if family == "sana" else {}
        embeds, mask, _, _ = pipe.encode_prompt(
            "",
            do_classifier_free_guidance=False,
            clean_caption=False,
            max_sequence_length=text.seq_len,
            **extra,
        )
        return embeds, None, mask


@pytest.mark.parametrize("name", TEXT_NAMES)
def test_prompt_embeddings_equal_the_pipelines_own(hub, name):
    import diffusers

    spec, adapter_cls = DIFFUSION_SPECS[name]
    adapter = backbones.create(name, weights="default", image_size=_size(name))
    # the whole pipeline, as a user loads it (PixArt's legacy Transformer2DModel entry maps to its own class)
    pipe = getattr(diffusers, spec.pipeline_cls).from_pretrained(str(hub.snapshot(name)))
    assert type(pipe.transformer).__name__ == spec.transformer_cls
    embeds, pooled, mask = _pipeline_text(name, pipe, spec.text)
    assert embeds.shape == (1, spec.text.seq_len, adapter_cls.text_dims(pipe.transformer)[0])
    assert torch.equal(adapter.text.embeds, embeds.float())
    assert (pooled is None) == (adapter.text.pooled is None)
    if pooled is not None:
        assert torch.equal(adapter.text.pooled, pooled.float())
    assert (mask is None) == (adapter.text.mask is None)
    if mask is not None:
        assert torch.equal(adapter.text.mask, mask) and int(mask.sum()) >= 1
    again = backbones.create(name, weights="default", image_size=_size(name))  # from the prompt cache
    assert again.text.source == adapter.text.source and torch.equal(again.text.embeds, adapter.text.embeds)


@pytest.mark.parametrize("name", [n for n in NAMES if family_of(n) in ("dit", "flux", "pixart")])
def test_conditioning_of_the_loaded_checkpoint(hub, name):
    """DiT's class labels, FLUX's guidance embedding and PixArt-α's micro-conditions, from the repos' configs."""
    import diffusers

    spec, _ = DIFFUSION_SPECS[name]
    size = _size(name)
    adapter = backbones.create(name, weights="default", image_size=size)
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))

    def features(a) -> torch.Tensor:
        (f,) = a.extract(x, layers=[-1], timesteps=_timesteps(name)).values()
        return f

    family = family_of(name)
    if family == "dit":
        pipe = diffusers.DiTPipeline.from_pretrained(str(hub.snapshot(name)))
        assert type(pipe.transformer).__name__ == spec.transformer_cls  # from the legacy Transformer2DModel
        assert pipe.get_label_ids(["goldfish"]) == [1]  # id2label of model_index.json
        goldfish = backbones.create(name, weights="default", image_size=size, class_id=1)
        assert adapter.class_id == 1000 and goldfish.class_id == 1
        assert not torch.allclose(features(adapter), features(goldfish))
    elif family == "flux":
        dev = spec.transformer_config["guidance_embeds"]
        assert adapter.transformer.config.guidance_embeds == dev
        assert adapter.guidance_scale == (3.5 if dev else None)
        if dev:
            other = backbones.create(name, weights="default", image_size=size, guidance_scale=1.0)
            assert not torch.allclose(features(adapter), features(other))
    else:
        micro = spec.transformer_config["use_additional_conditions"]
        assert adapter.transformer.use_additional_conditions == micro
        assert adapter.conditioning_fingerprint()["micro_conditions"] == (
            {"resolution": size, "aspect_ratio": 1.0} if micro else None
        )


def _extract_args(name: str, cache: Path) -> list[str]:
    args = ["extract", "--backbone", name, "--weights", "default", "--max-images", "2", "--resolution", "16"]
    args += ["--image-size", str(_size(name)), "--layers", "0,-1", "--cache", str(cache), "--no-progress"]
    return args + (["--timesteps", ",".join(map(str, _timesteps(name)))] if _timesteps(name) else [])


@pytest.mark.parametrize("name", _params(ONE_PER_FAMILY))
def test_cli_extract(hub, name, tmp_path, capsys):
    hub.folder(name)
    assert main(_extract_args(name, tmp_path)) == 0
    out = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert out.is_dir() and tmp_path in out.parents and any(out.rglob("*"))


@pytest.mark.parametrize("name", _params(ONE_PER_FAMILY))
def test_run_with_default_weights(hub, name, tmp_path):
    hub.folder(name)
    config = {
        "name": "mini",
        "data": {
            "name": "scenes",
            "max_train": 8,
            "max_val": 4,
            "max_test": 4,
            "options": {"resolution": 64, "seed": 0},
        },
        "backbones": [
            {
                "name": name,
                "weights": "default",
                "layers": [0, -1],
                "timesteps": _timesteps(name),
                "image_size": _size(name),
            }
        ],
        "probes": [{"name": "ridge", "params": {"lambdas": [0.1, 1.0]}}],
        "tasks": ["segmentation"],
        "extract": {"cache_dir": str(tmp_path / "c")},
        "output_dir": str(tmp_path / "r"),
    }
    rows, run_dir = probebench.run(config, analyze=False, progress=False)
    assert (run_dir / "results.csv").is_file()
    assert set(rows["backbone"]) == {name} and set(rows["weights"]) == {"default"}
    assert len(rows) >= 2 and set(rows["task"]) == {"segmentation"} and np.isfinite(rows["value"]).all()
