"""DINOv3 ViTs (Siméoni et al. 2025) through timm: ``dinov3-vits16``, ``-vits16plus``, ``-vitb16``, ``-vitl16``,
``-vith16plus``, ``-vit7b16`` (LVD-1689M weights, ``timm/vit_*_patch16_dinov3.lvd1689m`` on the HF hub).

Built with :func:`backbones.timm_backbones.build_timm_adapter` (family ``"dinov3"``): layers are the ViT blocks,
read with timm's ``forward_intermediates`` (early exit, pre-final-norm tokens); the CLS token and the 4 register
tokens never enter the spatial map. Probes that want the CLS token ask for it:
``adapter.extract(images, layers, return_cls=True)`` → ``(features, cls)`` from one forward, or
``adapter.extract_cls(images, layers)`` → ``{(layer, None): (B, C)}``.

``config="tiny"`` (random weights only) builds the same timm architecture with 2 blocks of width 64 for tests.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from backbones._registry import BACKBONES
from backbones.base import BackboneMeta, FeatureKey
from backbones.timm_backbones import TimmAdapter, build_timm_adapter
from probebench.core.errors import ProbebenchError

_CLS = "cls"  # internal key marking CLS rows between _extract and extract

TINY_KWARGS = {"depth": 2, "embed_dim": 64, "num_heads": 2}

# registered name → (timm model, blocks, width)
MODELS: dict[str, tuple[str, int, int]] = {
    "dinov3-vits16": ("vit_small_patch16_dinov3", 12, 384),
    "dinov3-vits16plus": ("vit_small_plus_patch16_dinov3", 12, 384),
    "dinov3-vitb16": ("vit_base_patch16_dinov3", 12, 768),
    "dinov3-vitl16": ("vit_large_patch16_dinov3", 24, 1024),
    "dinov3-vith16plus": ("vit_huge_plus_patch16_dinov3", 32, 1280),
    "dinov3-vit7b16": ("vit_7b_patch16_dinov3", 40, 4096),
}


class DinoV3Adapter(TimmAdapter):
    """A timm DINOv3 ViT; adds access to the CLS token (``return_cls`` / :meth:`extract_cls`)."""

    _with_cls = False

    def _forward_tokens(
        self, x: torch.Tensor, layers: list[int]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        x = (x - self.mean) / self.std
        with self.autocast():
            out = self.model.forward_intermediates(
                x,
                indices=layers,
                intermediates_only=True,
                stop_early=True,
                output_fmt="NLC",  # tokens; reshaped below as a view (timm's NCHW makes a contiguous copy)
                return_prefix_tokens=True,
            )
        if len(out) != len(layers):  # pragma: no cover - guards against a timm API change
            raise ProbebenchError(f"{self.name}: asked for {len(layers)} layers, timm returned {len(out)}.")
        h, w = self.model.patch_embed.dynamic_feat_size(tuple(x.shape[-2:]))
        spatial = [s.reshape(s.shape[0], h, w, s.shape[-1]).permute(0, 3, 1, 2) for s, _ in out]
        cls = [p[:, 0] for _, p in out]  # prefix tokens: [CLS, register 1..4]
        return spatial, cls

    def _extract(
        self,
        x: torch.Tensor,
        layers: list[int],
        timesteps: list[Any],
        *,
        image_ids: Any,
        seed: int,
        noise_draws: int,
    ) -> dict[Any, torch.Tensor]:
        spatial, cls = self._forward_tokens(x, layers)
        out: dict[Any, torch.Tensor] = {(layer, None): s for layer, s in zip(layers, spatial)}
        if self._with_cls:  # CLS rows ride along through the base class's fixed-size batching
            out.update({(layer, _CLS): c for layer, c in zip(layers, cls)})
        return out

    def extract(
        self,
        images: torch.Tensor,
        layers: Any = None,
        timesteps: Any = None,
        *,
        image_ids: Any = None,
        seed: int = 0,
        noise_draws: int = 1,
        return_cls: bool = False,
    ) -> (
        dict[FeatureKey, torch.Tensor] | tuple[dict[FeatureKey, torch.Tensor], dict[FeatureKey, torch.Tensor]]
    ):
        """As :meth:`Adapter.extract`; with ``return_cls=True`` also the CLS tokens ``{(layer, None): (B, C)}``
        from the same forward."""
        self._with_cls = bool(return_cls)
        try:
            feats = super().extract(
                images, layers, timesteps, image_ids=image_ids, seed=seed, noise_draws=noise_draws
            )
        finally:
            self._with_cls = False
        if not return_cls:
            return feats
        cls = {(layer, None): v for (layer, t), v in feats.items() if t == _CLS}
        return {k: v for k, v in feats.items() if k[1] != _CLS}, cls

    def extract_cls(self, images: torch.Tensor, layers: Any = None) -> dict[FeatureKey, torch.Tensor]:
        """CLS tokens (B, C) per requested layer (pre-final-norm, like the spatial maps)."""
        return self.extract(images, layers, return_cls=True)[1]


def create_dinov3(
    name: str,
    weights: str = "default",
    device: Any = None,
    dtype: Any = None,
    image_size: int | None = None,
    config: str = "full",
    random_seed: int = 0,
    compute_batch: int = 8,
    **kwargs: Any,
) -> DinoV3Adapter:
    """``dinov3-*``: a DINOv3 ViT from timm (LVD-1689M weights by default)."""
    if config not in ("full", "tiny"):
        raise ProbebenchError(f"config must be 'full' or 'tiny', got {config!r}.")
    if config == "tiny" and weights != "random":
        raise ProbebenchError(f"config='tiny' builds a test-sized {name} and needs weights='random'.")
    model_name = MODELS[name][0]
    model_kwargs = dict(kwargs.pop("model_kwargs", None) or {})
    if config == "tiny":
        model_kwargs.update(TINY_KWARGS)
        image_size = image_size or 64
    if kwargs:
        raise ProbebenchError(f"{name} takes no option(s) {', '.join(map(repr, kwargs))}.")
    base = build_timm_adapter(
        name,
        model_name,
        weights,
        device,
        dtype,
        image_size,
        family="dinov3",
        random_seed=random_seed,
        model_kwargs=model_kwargs,
        compute_batch=compute_batch,
    )
    meta = replace(
        base.meta,
        revision=None,
        timestep_convention="none",
        citation="Siméoni et al., DINOv3, arXiv 2508.10104 (2025)",
        notes=f"DINOv3 {model_name} (LVD-1689M), prefix tokens: CLS + 4 registers (CLS via return_cls)"
        + (" [tiny random test config]" if config == "tiny" else ""),
    )
    return DinoV3Adapter(
        meta,
        base.model,
        weights=base.weights,
        weights_id=base.weights_id,
        weights_note=base.weights_note,
        device=device,
        dtype=dtype,
        image_size=base.image_size,
        compute_batch=base.compute_batch,
    )


for _name, (_model, _depth, _width) in MODELS.items():
    BACKBONES.register(
        _name,
        create_dinov3,
        kind="dinov3 (timm)",
        source=f"timm/{_model}.lvd1689m",
        notes=f"DINOv3 {_model}: {_depth} blocks, width {_width}, patch 16, CLS via return_cls",
        family="dinov3",
        test_name=_name,
        test_kwargs={"config": "tiny"},
        meta=BackboneMeta(
            name=_name,
            family="dinov3",
            source=f"timm/{_model}.lvd1689m",
            num_layers=_depth,
            width=_width,
            patch_size=16,
            image_size=256,
            revision=None,
            license="dinov3-license",
            citation="Siméoni et al., DINOv3, arXiv 2508.10104 (2025)",
        ),
    )
