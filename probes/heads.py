"""Light dense heads on frozen features: the linear head (DINOv2/v3), a DeepLabV3+-lite for segmentation and
saliency and a DPT-lite for depth, as MMDiff uses them (about 36 M trained parameters at full width on a
3072-channel DiT), with a ``width`` setting so the same code runs on a CPU.

Every head takes a list of input maps ``[(B, C_i, h_i, w_i)]`` ordered shallow → deep and returns raw outputs
(B, K, h, w); the training loop upsamples them to the label size. Norms are GroupNorm (batch-independent: small
CPU batches and single-image batches behave like large ones), except the linear head's BatchNorm, which is the
DINOv2 protocol.

``HeadProbe`` (``head_probe``) trains them on one or several cached keys (+ keys of extra caches) through
:mod:`probes.training`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from backbones.base import FeatureKey
from probebench.core.errors import ProbebenchError
from probes.base import FeatureSource, ProbeOutput
from probes.training import ProbeRun, TrainConfig, TrainedProbe, cpu_state, parse_keys
from tasks.kinds import get_kind, kind_names

FULL_WIDTH = 256  # MMDiff scale: DPT features 256 / DeepLabV3+ ASPP 256 over a 2048-channel trunk
DEFAULT_WIDTH = 32  # CPU-sized
HEADS = ("linear", "deeplab", "dpt")  # what make_head builds; each target kind lists those that fit it


def resample(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def group_norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(8 if c % 8 == 0 else 1, c)


def conv_norm_relu(cin: int, cout: int, k: int = 1, dilation: int = 1) -> nn.Sequential:
    pad = dilation * (k // 2)
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=pad, dilation=dilation, bias=False), group_norm(cout), nn.ReLU()
    )


class LinearHead(nn.Module):
    """BN + dropout + 1×1 conv on the concatenation of the inputs (resampled to the first input's grid)."""

    def __init__(self, in_dims: Sequence[int], out: int, dropout: float = 0.1):
        super().__init__()
        dim = int(sum(in_dims))
        self.bn = nn.BatchNorm2d(dim)
        self.dropout = nn.Dropout2d(dropout)
        self.conv = nn.Conv2d(dim, out, 1)

    def forward(self, xs: Sequence[torch.Tensor]) -> torch.Tensor:
        size = xs[0].shape[-2:]
        x = torch.cat([resample(x, size) for x in xs], 1) if len(xs) > 1 else xs[0]
        return self.conv(self.dropout(self.bn(x)))


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: a 1×1 branch, one 3×3 branch per rate, image pooling, projection."""

    def __init__(self, cin: int, width: int, rates: Sequence[int]):
        super().__init__()
        self.branches = nn.ModuleList(
            [conv_norm_relu(cin, width, 1)] + [conv_norm_relu(cin, width, 3, int(r)) for r in rates]
        )
        self.pool = nn.Sequential(nn.Conv2d(cin, width, 1), nn.ReLU())  # 1×1 map: no norm
        self.project = conv_norm_relu(width * (len(rates) + 2), width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(F.adaptive_avg_pool2d(x, 1)).expand(-1, -1, *x.shape[-2:])
        return self.project(torch.cat([b(x) for b in self.branches] + [pooled], 1))


class DeepLabV3PlusLite(nn.Module):
    """DeepLabV3+ on frozen features: ASPP on the deepest input(s), a decoder fusing the shallowest one.

    The deep inputs (all but the first; the only one if there is one) are resampled to the last one's grid,
    concatenated and reduced by a 1×1 conv to ``8·width`` channels (a ResNet-like 2048-channel trunk at full
    width), then ASPP(``rates``) → ``width``. The decoder upsamples that to the shallow input's grid and fuses it
    with the shallow input reduced to ``width·3/16`` channels (48 at full width), by two 3×3 convs.
    """

    def __init__(
        self,
        in_dims: Sequence[int],
        out: int,
        width: int = DEFAULT_WIDTH,
        rates: Sequence[int] = (6, 12, 18),
    ):
        super().__init__()
        deep_dim = int(sum(in_dims[1:])) if len(in_dims) > 1 else int(in_dims[0])
        low = max(8, width * 3 // 16)
        self.reduce = conv_norm_relu(deep_dim, 8 * width, 1)
        self.aspp = ASPP(8 * width, width, rates)
        self.low = conv_norm_relu(int(in_dims[0]), low, 1)
        self.decoder = nn.Sequential(conv_norm_relu(width + low, width, 3), conv_norm_relu(width, width, 3))
        self.classifier = nn.Conv2d(width, out, 1)

    def forward(self, xs: Sequence[torch.Tensor]) -> torch.Tensor:
        shallow = xs[0]
        deep_in = xs[1:] or xs[:1]
        size = deep_in[-1].shape[-2:]
        deep = torch.cat([resample(x, size) for x in deep_in], 1) if len(deep_in) > 1 else deep_in[0]
        a = resample(self.aspp(self.reduce(deep)), shallow.shape[-2:])
        return self.classifier(self.decoder(torch.cat([a, self.low(shallow)], 1)))


class ResidualConvUnit(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FusionBlock(nn.Module):
    """DPT feature fusion: path (upsampled to the skip's grid) + RCU(skip) → RCU → 1×1."""

    def __init__(self, width: int):
        super().__init__()
        self.skip = ResidualConvUnit(width)
        self.rcu = ResidualConvUnit(width)
        self.out = nn.Conv2d(width, width, 1)

    def forward(self, path: torch.Tensor | None, skip: torch.Tensor) -> torch.Tensor:
        x = self.skip(skip) if path is None else resample(path, skip.shape[-2:]) + self.skip(skip)
        return self.out(self.rcu(x))


class DPTLite(nn.Module):
    """DPT on frozen features: reassemble the inputs at four scales (×4, ×2, ×1, ×½ of the token grid, with
    ``width·(1, 2, 4, 4)`` channels), 3×3 convs to ``width``, fusion blocks deep → shallow, and a head that
    doubles the resolution once more (outputs at 8× the token grid).

    With fewer than four inputs they are spread over the stages (one map reused at every scale, as DPT does for
    a single-scale ViT); with more, the extra stages sit at ×½.
    """

    def __init__(self, in_dims: Sequence[int], out: int, width: int = DEFAULT_WIDTH):
        super().__init__()
        n = max(4, len(in_dims))
        self.source = [round(j * (len(in_dims) - 1) / (n - 1)) for j in range(n)]
        scales = [4, 2, 1] + [0] * (n - 3)  # 0 = downsample ×½
        mults = [1, 2, 4] + [4] * (n - 3)
        self.reassemble = nn.ModuleList()
        for j in range(n):
            c = width * mults[j]
            layers: list[nn.Module] = [nn.Conv2d(int(in_dims[self.source[j]]), c, 1)]
            if scales[j] > 1:
                layers.append(nn.ConvTranspose2d(c, c, scales[j], stride=scales[j]))
            elif scales[j] == 0:
                layers.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
            layers.append(nn.Conv2d(c, width, 3, padding=1, bias=False))
            self.reassemble.append(nn.Sequential(*layers))
        self.fusion = nn.ModuleList([FusionBlock(width) for _ in range(n)])
        hidden = max(8, width // 8)
        self.head = nn.Sequential(
            nn.Conv2d(width, width // 2, 3, padding=1),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            nn.Conv2d(width // 2, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, out, 1),
        )

    def forward(self, xs: Sequence[torch.Tensor]) -> torch.Tensor:
        feats = [r(xs[s]) for r, s in zip(self.reassemble, self.source)]
        path = None
        for j in reversed(range(len(feats))):
            path = self.fusion[j](path, feats[j])
        return self.head(path)


def make_head(name: str, in_dims: Sequence[int], out: int, *, width: int, dropout: float = 0.0, **kw: Any):
    """A head by name: ``linear``, ``deeplab``, ``dpt``."""
    if name == "linear":
        return LinearHead(in_dims, out, dropout)
    if name == "deeplab":
        return DeepLabV3PlusLite(in_dims, out, width, rates=kw.get("rates", (6, 12, 18)))
    if name == "dpt":
        return DPTLite(in_dims, out, width)
    raise ProbebenchError(f"Unknown head {name!r}. Valid: {', '.join(HEADS)}.")


def head_for(head: str, kind: str, probe: str) -> str:
    """Resolve ``auto`` (the kind's ``default_head``) and refuse a head that does not fit the task (a depth head
    on segmentation...): the target kind lists the heads that fit it."""
    target = get_kind(kind)
    name = target.default_head if head == "auto" else head
    if name not in HEADS:
        raise ProbebenchError(f"Probe {probe!r}: unknown head {head!r}. Valid: auto, {', '.join(HEADS)}.")
    if name not in target.heads:
        serves = [k for k in kind_names() if name in get_kind(k).heads]
        fits = [h for h in HEADS if h in target.heads and h != "linear"]
        raise ProbebenchError(
            f"Probe {probe!r}: the {name} head is a {'/'.join(serves)} head and does not fit the "
            f"{kind} task. Use head='auto' or {', '.join(repr(h) for h in fits)}."
        )
    return name


def check_heads(head: str, kinds: Sequence[str], probe: str) -> dict[str, str]:
    return {k: head_for(head, k, probe) for k in kinds}


class HeadProbe(TrainedProbe):
    """Train a light head per task on ``keys`` (default: every key of the main cache), used as the head's levels
    in the given order (shallow → deep), then every extra cache's keys (``extra_keys``, default all). To fuse the
    timesteps of each layer before the head, use the ``fusion`` probe with ``head=...``."""

    name = "head"

    @dataclass
    class Params(TrainConfig):
        """``head`` (``auto``: DeepLabV3+-lite for segmentation/saliency, DPT-lite for depth; a head that does not
        fit a task is an error), ``width`` (32; 256 = MMDiff scale), ``rates`` (DeepLab atrous rates),
        ``extra_keys`` and the training parameters (``epochs`` 30 here)."""

        epochs: int = 30
        head: str = "auto"
        width: int = DEFAULT_WIDTH
        rates: Any = (6, 12, 18)
        extra_keys: Any = None

    def fit(
        self,
        train: FeatureSource,
        val: FeatureSource,
        test: FeatureSource | None,
        kinds: Sequence[str],
        *,
        keys: Sequence[FeatureKey] | None = None,
        seed: int = 0,
        progress: bool = True,
        extra: Any = None,
    ) -> ProbeOutput:
        p = self.params
        heads = check_heads(p.head, kinds, "head")
        run = ProbeRun(self.name, train, val, test, kinds, cfg=p, seed=seed, progress=progress, extra=extra)
        main_keys = parse_keys(keys, "keys") if keys is not None else train.keys
        extra_keys = parse_keys(p.extra_keys, "extra_keys") if p.extra_keys is not None else None
        inputs = run.inputs(main_keys) + run.extra_inputs(extra_keys)
        feats = run.features(inputs, grid="native")
        out = ProbeOutput([])
        for kind in kinds:
            variant = f"head-{heads[kind]}"
            dims, channels = [i.dim for i in inputs], run.objective(kind).channels

            def build(name: str = heads[kind], dims: list[int] = dims, channels: int = channels) -> nn.Module:
                return make_head(name, dims, channels, width=p.width, rates=tuple(p.rates))

            fitted = run.train(build, feats, kind, variant, inputs)
            out.records += run.records(fitted, feats, kind, variant, inputs, width=p.width)
            out.state_dicts[run.state_dict_name(variant, kind, inputs)] = cpu_state(fitted.model)
        return out


head_probe = HeadProbe.fit_with  # the probe as a function, its parameters by keyword


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def reference_parameter_counts(dim: int = 3072, levels: int = 4, classes: int = 21) -> dict[str, int]:
    """Trained parameters of each head at the CPU default and at full width, on ``levels`` inputs of ``dim``
    channels (3072: FLUX.1's hidden size)."""
    out = {}
    for label, width in (("default", DEFAULT_WIDTH), ("full", FULL_WIDTH)):
        out[f"deeplab/{label}"] = count_parameters(DeepLabV3PlusLite([dim] * levels, classes, width))
        out[f"dpt/{label}"] = count_parameters(DPTLite([dim] * levels, 256, width))
    return out
