"""The checks a pretrained-weights folder passes before anything large is loaded, and the prompt-embedding cache's
key: the wrong family, a partial snapshot, a gated repo, ``.bin`` weights, text encoders checked and run (on the
adapter's device and dtype) before the transformer is read, and embeddings recomputed when a text encoder's file
changes. The full real-weights path on miniature snapshots of every registered repo is tests/test_real_weights.py.
"""

from __future__ import annotations

import json

import pytest
import torch

import backbones
from backbones.diffusion import DIFFUSION_SPECS, TextConditioning, diffusion_spec
from backbones.diffusion.sigmas import pipeline_timesteps, step_of, strength_timestep
from probebench.core.errors import ProbebenchError, WeightsNotFoundError


def tiny(name: str) -> backbones.Adapter:
    return backbones.create(name, weights="random", config="tiny", compute_batch=2)


def save_modules(adapter: backbones.Adapter, root, safe: bool = True) -> None:
    adapter.model.transformer.save_pretrained(root / "transformer", safe_serialization=safe)
    adapter.model.vae.save_pretrained(root / "vae", safe_serialization=safe)


@pytest.fixture
def prompt_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PROBEBENCH_PROMPT_CACHE", str(tmp_path / "prompt_cache"))
    return tmp_path / "prompt_cache"


def fake_text_folder(root, subfolders, payload: bytes = b"weights") -> None:
    """Text encoder and tokenizer subfolders with the files the checks look for (contents are not loaded:
    ``encode_prompt`` is replaced in these tests)."""
    for sub in subfolders:
        (root / sub).mkdir(parents=True, exist_ok=True)
        if sub.startswith("tokenizer"):
            (root / sub / "tokenizer_config.json").write_text("{}")
        else:
            (root / sub / "config.json").write_text("{}")
            (root / sub / "model.safetensors").write_bytes(payload)


def test_bin_weights_load_where_no_safetensors_exist(tmp_path):
    a = tiny("dit-xl-2-256")
    save_modules(a, tmp_path, safe=False)
    assert (tmp_path / "transformer" / "diffusion_pytorch_model.bin").is_file()
    assert not list(tmp_path.rglob("*.safetensors"))
    b = backbones.create("dit-xl-2-256", weights=str(tmp_path), image_size=a.image_size, compute_batch=2)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    fa, fb = a.extract(x, [0, -1], [500]), b.extract(x, [0, -1], [500])
    assert all(torch.equal(fa[k], fb[k]) for k in fa)


def test_a_folder_of_another_family_names_what_it_holds(tmp_path):
    save_modules(tiny("dit-xl-2-256"), tmp_path)
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(
        ProbebenchError, match=r"holds a FluxPipeline .*needs a DiTPipeline.*flux\.1-dev, flux\.1-schnell"
    ):
        backbones.create("dit-xl-2-256", weights=str(tmp_path))
    (tmp_path / "model_index.json").unlink()
    cfg = json.loads((tmp_path / "transformer" / "config.json").read_text())
    (tmp_path / "transformer" / "config.json").write_text(
        json.dumps({**cfg, "_class_name": "FluxTransformer2DModel"})
    )
    with pytest.raises(ProbebenchError, match="holds a FluxTransformer2DModel, but dit-xl-2-256 needs"):
        backbones.create("dit-xl-2-256", weights=str(tmp_path))


def test_a_partial_snapshot_names_every_missing_file(tmp_path):
    save_modules(tiny("dit-xl-2-256"), tmp_path)
    (tmp_path / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    index = {
        "weight_map": {
            "a": "diffusion_pytorch_model-00001-of-00002.safetensors",
            "b": "diffusion_pytorch_model-00002-of-00002.safetensors",
        }
    }
    (tmp_path / "transformer" / "diffusion_pytorch_model.safetensors").unlink()
    (tmp_path / "transformer" / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps(index)
    )
    (tmp_path / "transformer" / "diffusion_pytorch_model-00001-of-00002.safetensors").write_bytes(b"x")
    with pytest.raises(WeightsNotFoundError, match="partial copy") as err:
        backbones.create("dit-xl-2-256", weights=str(tmp_path))
    msg = str(err.value)
    assert "transformer/diffusion_pytorch_model-00002-of-00002.safetensors" in msg
    assert "vae/diffusion_pytorch_model.safetensors (or diffusion_pytorch_model.bin" in msg
    assert "00001-of-00002" not in msg


def test_a_gated_repo_says_so_with_the_offline_alternative(monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError

    class Gated(GatedRepoError):
        def __init__(
            self, message: str
        ):  # the hub's error wants an HTTP response; the message is enough here
            Exception.__init__(self, message)

    def gated(*args, **kwargs):
        raise Gated("403 Client Error: access to model is restricted")

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", gated)
    with pytest.raises(WeightsNotFoundError, match=r"gated repository.*HF_TOKEN.*weights=<that folder>"):
        backbones.create("flux.1-dev", weights="default")


def test_text_encoders_are_checked_before_the_transformer_is_loaded(tmp_path, prompt_cache, monkeypatch):
    _, cls = diffusion_spec("sd3-medium")
    save_modules(tiny("sd3-medium"), tmp_path)
    fake_text_folder(tmp_path, [s for s in cls.text_subfolders if s != "text_encoder_3"])
    loaded = []
    import diffusers

    real = diffusers.SD3Transformer2DModel.from_pretrained
    monkeypatch.setattr(
        diffusers.SD3Transformer2DModel, "from_pretrained", lambda *a, **k: loaded.append(1) or real(*a, **k)
    )
    with pytest.raises(
        WeightsNotFoundError, match=r"missing text_encoder_3/config\.json, text_encoder_3/model"
    ):
        backbones.create("sd3-medium", weights=str(tmp_path), image_size=64)
    assert not loaded  # nothing large was read

    import importlib.util

    fake_text_folder(tmp_path, ["text_encoder_3"])
    find = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "transformers" else find(n, *a)
    )
    with pytest.raises(ProbebenchError, match="pip install transformers sentencepiece"):
        backbones.create("sd3-medium", weights=str(tmp_path), image_size=64)
    assert not loaded


@pytest.mark.parametrize("dtype, expected", [("float32", torch.float32), ("float16", torch.bfloat16)])
def test_prompt_cache_is_keyed_on_every_text_file_and_encoders_run_on_the_adapter(
    tmp_path, prompt_cache, monkeypatch, dtype, expected
):
    """Prompt embeddings are computed once per (text encoder + tokenizer files, prompt, encoder dtype), on the
    adapter's device in its dtype (float16 runs the encoders in bfloat16); changing one text encoder's weights
    recomputes them, so features are never conditioned on another encoder's vectors."""
    name = "flux.1-schnell"
    spec, cls = diffusion_spec(name)
    save_modules(tiny(name), tmp_path)
    fake_text_folder(tmp_path, cls.text_subfolders)
    d = spec.tiny_transformer_config
    calls = []

    def encode(folder, prompt, text, *, device, dtype):
        calls.append((device.type, dtype))
        gen = torch.Generator().manual_seed(len(calls))
        return TextConditioning(
            torch.randn(1, 6, d["joint_attention_dim"], generator=gen),
            torch.randn(1, d["pooled_projection_dim"], generator=gen),
        )

    monkeypatch.setattr(cls, "encode_prompt", classmethod(lambda c, *a, **k: encode(*a, **k)))
    kw = {"weights": str(tmp_path), "image_size": 64, "dtype": dtype}
    a = backbones.create(name, **kw)
    b = backbones.create(name, **kw)
    assert calls == [("cpu", expected)] and torch.equal(a.text.embeds, b.text.embeds)
    assert a.text.source.startswith("prompt-cache:") and a.fingerprint() == b.fingerprint()
    (tmp_path / "text_encoder_2" / "model.safetensors").write_bytes(b"other weights")
    c = backbones.create(name, **kw)
    assert len(calls) == 2 and not torch.equal(a.text.embeds, c.text.embeds)
    assert a.fingerprint() != c.fingerprint()
    (tmp_path / "tokenizer" / "tokenizer_config.json").write_text('{"model_max_length": 77}')
    backbones.create(name, **kw)
    assert len(calls) == 3


def test_sigma_table_follows_the_repos_samplers():
    """The noise level of a pipeline step / img2img strength comes from the family's own diffusers scheduler:
    SD3's shift 3 (σ = 3s/(1+2s)), FLUX.1-dev's shift that grows with the token count, schnell unshifted."""
    sd3, _ = diffusion_spec("sd3-medium")
    s = pipeline_timesteps(sd3, 28)
    lin = 1 - torch.arange(28, dtype=torch.float64) * (1 - 1 / 1000 * 3 / (1 + 2 / 1000)) / 27
    assert s[0] == 1.0 and abs(s[11] - 3 * lin[11].item() / (1 + 2 * lin[11].item())) < 1e-3
    assert strength_timestep(sd3, 0.6, 28) == pytest.approx(s[11])
    assert step_of(sd3, s[11], 28) == 11
    dev, _ = diffusion_spec("flux.1-dev")
    assert pipeline_timesteps(dev, 28, 1024)[14] > pipeline_timesteps(dev, 28, 512)[14] + 0.05
    schnell, _ = diffusion_spec("flux.1-schnell")
    assert pipeline_timesteps(schnell, 4, 1024) == pytest.approx([1.0, 0.75, 0.5, 0.25], abs=0.01)
    for name, (spec, _) in DIFFUSION_SPECS.items():
        levels = pipeline_timesteps(spec, 10)
        assert len(levels) == 10 and all(levels[:-1] >= levels[1:]), name


def test_the_recorded_dtype_and_device_type_are_the_computed_ones():
    """A cache's identity says what computed it: tiny-mmdit in bfloat16 runs its transformer in bfloat16 (it used
    to be recorded as bfloat16 and computed in float32), and the device type is part of every fingerprint."""
    bf16, fp32 = (backbones.create("tiny-mmdit", dtype=d) for d in ("bfloat16", "float32"))
    assert bf16.transformer.dtype == torch.bfloat16 and fp32.transformer.dtype == torch.float32
    assert bf16.fingerprint()["dtype"] == "bfloat16" and bf16.fingerprint()["device_type"] == "cpu"
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(bf16.extract(x, [2], [0.5])[(2, 0.5)], fp32.extract(x, [2], [0.5])[(2, 0.5)])
