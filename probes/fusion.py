"""Fusion probes over timesteps (MMDiff) and their baselines, in one code path.

Inputs: K cached maps — the timesteps of one layer, optionally several layers, plus keys of extra caches of the
same images (another backbone, or the same one extracted with other noise seeds: the noise control, where the
K inputs are K noise draws of one timestep). All are resampled (bilinear) to the first key's grid.

Each input gets a 1×1 projection to a common ``width`` and a per-pixel channel normalisation without learned
scale (so an input cannot be silenced by shrinking its projection: the fusion weights alone say how much each
input contributes). Then, per group of inputs (all together, or one group per layer with ``group_by="layer"``):

- ``spatial`` (MMDiff): a small conv net on the projections predicts per-pixel logits over the group's inputs →
  softmax → weighted sum;
- ``global`` (Diffusion Hyperfeatures): one learned logit per input → softmax → weighted sum;
- ``mean``: uniform weights;  ``concat``: the projections concatenated;
- ``single``: one model per input, each recorded at its own cell; the analysis reports the best on the
  validation split (best single timestep).

With ``cues: true`` an extra source is not fused as more inputs but read as *cues*: each input (layer l,
timestep t) gets that source's maps at the same timestep t (every one of its keys at t, resampled to the input's
grid) concatenated to its channels before its 1×1 projection. The projection of timestep t thus sees
``[features_t ; cues_t]`` and the same learned timestep weights fuse them — e.g. concept-probability maps as cues
of a diffusion backbone's features; ``single`` with cues is its control (best single timestep + cues).

The fused map(s) go to a head: ``linear`` (BN + 1×1 conv; default), or a light head (``deeplab``, ``dpt``,
``auto``), which takes one level per group — so ``group_by="layer"`` with ``head="dpt"`` is MMDiff's depth model.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from backbones.base import FeatureKey
from probebench.core.errors import ProbebenchError
from probes.base import FeatureSource, ProbeOutput
from probes.features import attach_cues
from probes.heads import DEFAULT_WIDTH, check_heads, make_head, resample
from probes.training import (
    Fitted,
    Input,
    ProbeRun,
    TrainConfig,
    TrainedProbe,
    cpu_state,
    head_spec,
    is_better,
    parse_keys,
)

MODES = ("spatial", "global", "mean", "concat", "single")
GROUP_BY = ("none", "layer")


class ChannelNorm(nn.Module):
    """Per-pixel normalisation over channels, without learned scale or shift."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu = x.mean(1, keepdim=True)
        var = x.var(1, keepdim=True, unbiased=False)
        return (x - mu) * torch.rsqrt(var + 1e-6)


class TimestepFusion(nn.Module):
    """Projections of K inputs to ``width`` channels, fused per group by ``mode`` into one map per group."""

    def __init__(
        self,
        in_dims: Sequence[int],
        mode: str = "spatial",
        width: int = 64,
        groups: Sequence[Sequence[int]] | None = None,
        gate_width: int | None = None,
        weight_lr_mult: float = 10.0,
        gate_entropy: float = 0.0,
    ):
        super().__init__()
        if mode not in MODES or mode == "single":
            raise ProbebenchError(
                f"Unknown fusion mode {mode!r}. Valid: {', '.join(m for m in MODES if m != 'single')}."
            )
        self.mode, self.width = mode, width
        if gate_entropy < 0:
            raise ProbebenchError(f"fusion: gate_entropy must be ≥ 0, got {gate_entropy}")
        # weight of the mean per-pixel entropy of the spatial weights, subtracted from the training loss: it keeps
        # a gate that would saturate early (one-hot on one input at every pixel) spread until the data pay for
        # a sharper choice
        self.gate_entropy = float(gate_entropy)
        self._entropy: list[torch.Tensor] = []
        self.groups = [list(g) for g in (groups or [list(range(len(in_dims)))])]
        self.proj = nn.ModuleList([nn.Conv2d(int(c), width, 1) for c in in_dims])
        self.norm = ChannelNorm()
        if mode == "spatial":
            gw = gate_width or max(4, width // 4)
            self.gates = nn.ModuleList()
            for g in self.groups:
                last = nn.Conv2d(gw, len(g), 3, padding=1)
                nn.init.zeros_(last.weight)  # uniform weights at init: the spatial fusion starts as the mean
                nn.init.zeros_(last.bias)
                self.gates.append(nn.Sequential(nn.Conv2d(len(g) * width, gw, 3, padding=1), nn.GELU(), last))
        if mode == "global":
            self.logits = nn.Parameter(torch.zeros(len(in_dims)))
            # Adam moves every parameter by ~lr per step: a logit alone would move far slower than a unit fed
            # by many weights, so the global weights learn with a larger lr (``weight_lr_mult``).
            self.logits.lr_mult = weight_lr_mult

    @property
    def out_dims(self) -> list[int]:
        return [self.width * (len(g) if self.mode == "concat" else 1) for g in self.groups]

    def project(self, xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        size = xs[0].shape[-2:]
        return [self.norm(p(resample(x, size))) for p, x in zip(self.proj, xs)]

    def group_weights(self, gi: int, ps: torch.Tensor) -> torch.Tensor:
        """Weights over group ``gi``'s inputs: (B, Kg, h, w); ``ps`` = its projections (B, Kg, W, h, w)."""
        b, k, _, h, w = ps.shape
        if self.mode == "spatial":
            return torch.softmax(self.gates[gi](ps.flatten(1, 2)), dim=1)
        if self.mode == "global":
            return torch.softmax(self.logits[self.groups[gi]], 0).view(1, k, 1, 1).expand(b, k, h, w)
        return ps.new_full((b, k, h, w), 1.0 / k)

    def forward(self, xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        p = self.project(xs)
        out = []
        for gi, g in enumerate(self.groups):
            if self.mode == "concat":
                out.append(torch.cat([p[k] for k in g], 1))
                continue
            ps = torch.stack([p[k] for k in g], 1)
            weights = self.group_weights(gi, ps)
            if self.training and self.mode == "spatial" and self.gate_entropy > 0:
                self._entropy.append(-(weights * torch.log(weights.clamp_min(1e-12))).sum(1).mean())
            out.append((weights.unsqueeze(2) * ps).sum(1))
        return out

    def regularization(self) -> torch.Tensor | None:
        """−gate_entropy × the mean entropy of the spatial weights of the forward passes since the last call
        (training mode only); ``None`` when there is nothing to add."""
        if not self._entropy:
            return None
        h = torch.stack(self._entropy).mean()
        self._entropy.clear()
        return -self.gate_entropy * h

    def weight_maps(self, xs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Per-pixel weight of every input, (B, K, h, w): each group's softmax in its inputs' slots."""
        if self.mode == "concat":
            raise ProbebenchError("The concat fusion has no weights.")
        p = self.project(xs)
        b, _, h, w = p[0].shape
        out = p[0].new_zeros(b, len(p), h, w)
        for gi, g in enumerate(self.groups):
            out[:, g] = self.group_weights(gi, torch.stack([p[k] for k in g], 1))
        return out

    def global_weights(self) -> torch.Tensor:
        """(K,) softmax weights of the ``global`` mode (per group)."""
        out = torch.zeros(len(self.proj))
        for g in self.groups:
            out[g] = torch.softmax(self.logits.detach().cpu()[g], 0)
        return out


def fusion_kwargs(p: Any, dims: Sequence[int], out: int, groups: Any, mode: str, head: str) -> dict[str, Any]:
    """The constructor arguments of a :class:`FusionNet` under the probe's parameters ``p`` (what a saved head's
    spec records, so the head can be rebuilt without the run's config)."""
    return {
        "in_dims": [int(d) for d in dims],
        "out": int(out),
        "mode": mode,
        "width": p.width,
        "groups": groups,
        "gate_width": p.gate_width,
        "weight_lr_mult": p.weight_lr_mult,
        "gate_entropy": p.gate_entropy,
        "head": head,
        "head_width": p.head_width,
        "dropout": p.dropout,
        "rates": [int(r) for r in p.rates],
    }


def build_fusion_net(kwargs: dict[str, Any]) -> FusionNet:
    """A :class:`FusionNet` from :func:`fusion_kwargs` (JSON-able: lists where the constructor takes tuples)."""
    return FusionNet(**{**kwargs, "rates": tuple(kwargs["rates"])})


def load_fusion_head(path: str | Path) -> tuple[FusionNet, dict[str, Any]]:
    """A saved fusion head rebuilt from its own file: the model (eval mode, weights loaded strictly) and its spec
    (inputs in order, grid rule, objective options, label space; see :func:`probes.training.head_spec`)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118  (safe_open has no iterator)
    if "spec" not in meta:
        raise ProbebenchError(
            f"{path} holds no head spec (heads saved before this version); refit the stage to rebuild it from disk."
        )
    spec = json.loads(meta["spec"])
    net = build_fusion_net(spec["kwargs"])
    net.load_state_dict(state, strict=True)
    return net.eval(), spec


class FusionNet(nn.Module):
    """:class:`TimestepFusion` followed by a head over the fused map(s) (one level per group)."""

    def __init__(
        self,
        in_dims: Sequence[int],
        out: int,
        *,
        mode: str = "spatial",
        width: int = 64,
        groups: Sequence[Sequence[int]] | None = None,
        gate_width: int | None = None,
        weight_lr_mult: float = 10.0,
        gate_entropy: float = 0.0,
        head: str = "linear",
        head_width: int = DEFAULT_WIDTH,
        dropout: float = 0.0,
        rates: Sequence[int] = (6, 12, 18),
    ):
        super().__init__()
        self.fusion = TimestepFusion(in_dims, mode, width, groups, gate_width, weight_lr_mult, gate_entropy)
        self.head = make_head(head, self.fusion.out_dims, out, width=head_width, dropout=dropout, rates=rates)

    def forward(self, xs: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.head(self.fusion(xs))

    def regularization(self) -> torch.Tensor | None:
        """The term the trainer adds to the task loss (see :meth:`TimestepFusion.regularization`)."""
        return self.fusion.regularization()


def layer_groups(inputs: Sequence[Input], group_by: str) -> list[list[int]]:
    """Input indices per group: all together, or one group per (cache, layer) in order of appearance."""
    if group_by == "none":
        return [list(range(len(inputs)))]
    groups: dict[tuple[int, int], list[int]] = {}
    for i, inp in enumerate(inputs):
        groups.setdefault((inp.source, inp.key[0]), []).append(i)
    return list(groups.values())


def _keys_meta(inputs: Sequence[Input]) -> dict[str, Any]:
    meta = {
        "keys": [[i.key[0], i.key[1]] for i in inputs],
        "inputs": [i.label for i in inputs],
        "sources": [i.source for i in inputs],
        "log_snr": [i.log_snr for i in inputs],
    }
    if any(i.cues for i in inputs):
        meta["cues"] = [[c.label for c in i.cues] for i in inputs]
    return meta


def cue_inputs(
    run: ProbeRun, inputs: Sequence[Input], extra_keys: Sequence[FeatureKey] | None
) -> list[Input]:
    """``inputs`` with the one extra source's maps at their timesteps attached as cues (its keys: the source's
    own, else ``extra_keys``, else all)."""
    if len(run.extras) != 1:
        names = run.source_names[1:]
        raise ProbebenchError(
            "fusion probe: cues: true reads the cue maps of exactly one extra source (a joint fit, backbones: "
            f"[main, cue]); it got {len(names)}" + (f" ({', '.join(names)})" if names else "") + "."
        )
    return attach_cues(inputs, run.extra_inputs(extra_keys), run.source_names[1], "fusion probe (cues)")


def global_grid(inputs: Sequence[Input], weights: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """(K,) weights → (L, T): rows = (cache, layer), columns = timesteps, in order of appearance (NaN = absent)."""
    rows: list[tuple[int, int]] = []
    cols: list[Any] = []
    col_snr: list[Any] = []
    for i in inputs:
        if (i.source, i.key[0]) not in rows:
            rows.append((i.source, i.key[0]))
        if i.key[1] not in cols:
            cols.append(i.key[1])
            col_snr.append(i.log_snr)
    grid = np.full((len(rows), len(cols)), np.nan, dtype=np.float32)
    for w, i in zip(weights, inputs):
        grid[rows.index((i.source, i.key[0])), cols.index(i.key[1])] = w
    labels = {(i.source, i.key[0]): i.label.rsplit("_T", 1)[0] for i in inputs}
    return grid, {
        "rows": [labels[r] for r in rows],
        "layers": [r[1] for r in rows],
        "timesteps": cols,
        "column_log_snr": col_snr,
    }


def collect_weight_maps(run: ProbeRun, fitted: Fitted, feats: Any) -> np.ndarray:
    """The validation images' per-pixel weight maps (N, K, h, w) float32."""
    model = fitted.model
    xs, bs, out = feats["val"], run.cfg.batch_size, []
    with torch.no_grad():
        for s in range(0, len(xs), bs):
            batch = [x.to(run.device) for x in xs.batch(np.arange(s, min(s + bs, len(xs))))]
            out.append(model.fusion.weight_maps(batch).float().cpu().numpy())
    return np.concatenate(out).astype(np.float32)


class FusionProbe(TrainedProbe):
    """Fuse ``keys`` (default: every key of the main cache) and every extra cache's keys (``extra_keys``,
    default all) per task — or, with ``cues``, the main keys each with the one extra cache's maps of its
    timestep as extra channels; records carry the variant ``fusion-<mode>``.

    Artifacts (per task): ``fusion_weights/<task>`` (N_val, K, h, w) for ``spatial``; ``global_weights/<task>``
    (L, T) for ``global``; ``single_val_scores/<task>`` (K,) for ``single``; ``artifact_meta`` names the
    inputs (keys, labels, log-SNRs) in order.
    """

    name = "fusion"
    # 2: mode "single" records every input at its own cell (1 recorded only the val-best input): rows of stages
    # run before are not taken as done (see probebench.pipeline.stage_hash)
    rows_version = 2

    @dataclass
    class Params(TrainConfig):
        """``mode`` (spatial | global | mean | concat | single), ``width`` (projection width, 64), ``gate_width``
        (spatial weight net width, default ``width // 4``: a small gate overfits less), ``weight_lr_mult`` (lr
        factor of the ``global`` logits, 10), ``gate_entropy`` (weight of an entropy bonus on the ``spatial``
        weights, 0 = none), ``group_by`` (none | layer), ``head`` (linear | deeplab | dpt | auto),
        ``head_width`` (light heads, 32; 256 = MMDiff scale), ``rates``, ``dropout`` (0), ``extra_keys`` (the
        extra sources' keys: ``[[layer, t], ...]``, or ``all``: every key, which in a run also keeps its cells
        from being chosen from the extra backbone's own rows),
        ``cues`` (false; true: the one extra source's maps at each input's timestep are concatenated to that
        input's channels before its projection, instead of being fused as inputs of their own; its keys are
        restricted by ``extra_keys``; works in every mode, ``single`` included), and the training parameters
        (``lr`` 1e-2 here)."""

        lr: float = 1e-2
        mode: str = "spatial"
        width: int = 64
        gate_width: Any = None
        weight_lr_mult: float = 10.0
        gate_entropy: float = 0.0
        group_by: str = "none"
        head: str = "linear"
        head_width: int = DEFAULT_WIDTH
        rates: Any = (6, 12, 18)
        dropout: float = 0.0
        extra_keys: Any = None
        cues: bool = False

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
        mode, group_by = p.mode, p.group_by
        if mode not in MODES:
            raise ProbebenchError(f"fusion probe: unknown mode {mode!r}. Valid: {', '.join(MODES)}.")
        if group_by not in GROUP_BY:
            raise ProbebenchError(
                f"fusion probe: unknown group_by {group_by!r}. Valid: {', '.join(GROUP_BY)}."
            )
        heads = check_heads(p.head, kinds, "fusion") if p.head != "linear" else dict.fromkeys(kinds, "linear")
        run = ProbeRun(self.name, train, val, test, kinds, cfg=p, seed=seed, progress=progress, extra=extra)
        main_keys = parse_keys(keys, "keys") if keys is not None else train.keys
        # ``all``: every key of the extra source (a run then does not choose its cells from its own rows)
        every = p.extra_keys is None or p.extra_keys == "all"
        extra_keys = None if every else parse_keys(p.extra_keys, "extra_keys")
        if p.cues:
            inputs = cue_inputs(run, run.inputs(main_keys), extra_keys)
        else:
            inputs = run.inputs(main_keys) + run.extra_inputs(extra_keys)
        feats = run.features(inputs, grid="first")
        variant = f"fusion-{mode}"
        fields: dict[str, Any] = {"mode": mode, "group_by": group_by}
        if p.cues:
            fields["cues"] = True
        out = ProbeOutput([])
        for kind in kinds:
            channels = run.objective(kind).channels

            def build(dims: Sequence[int], groups: Any, m: str, head: str = heads[kind], ch: int = channels):
                kwargs = fusion_kwargs(p, dims, ch, groups, m, head)
                return lambda: build_fusion_net(kwargs)

            meta = {"task": kind, "mode": mode, "group_by": group_by, **_keys_meta(inputs)}
            if mode == "single":
                if any(i.source for i in inputs):
                    raise ProbebenchError(
                        "fusion probe: mode 'single' fits one model per input and records each at its (layer, "
                        "timestep), which does not name its backbone; run it on each backbone alone (select:) "
                        "instead of with extra caches, or read the extra cache's maps as cues (cues: true)."
                    )
                out.records += _single(run, inputs, kind, variant, build, out, meta, fields, heads[kind])
                continue
            dims, groups = [i.dim for i in inputs], layer_groups(inputs, group_by)
            meta["groups"] = groups
            fitted = run.train(build(dims, groups, mode), feats, kind, variant, inputs)
            out.records += run.records(fitted, feats, kind, variant, inputs, **fields)
            name = run.state_dict_name(variant, kind, inputs)
            out.state_dicts[name] = cpu_state(fitted.model)
            kwargs = fusion_kwargs(p, dims, channels, groups, mode, heads[kind])
            out.state_specs[name] = head_spec(run, kind, inputs, kwargs)
            if mode == "spatial":
                name = f"fusion_weights/{kind}"
                out.artifacts[name] = collect_weight_maps(run, fitted, feats)
                val_ds = val.dataset
                out.artifact_meta[name] = {
                    **meta,
                    "axes": "image, input, y, x",
                    "split": val_ds.split,
                    "image_ids": [val_ds.image_id(i) for i in range(len(val_ds))],
                }
            elif mode == "global":
                name = f"global_weights/{kind}"
                grid, gmeta = global_grid(inputs, fitted.model.fusion.global_weights().numpy())
                out.artifacts[name] = grid
                out.artifact_meta[name] = {**meta, **gmeta, "axes": "layer, timestep"}
        return out


fusion_probe = FusionProbe.fit_with  # the probe as a function, its parameters by keyword


def _single(
    run: ProbeRun,
    inputs: Sequence[Input],
    kind: str,
    variant: str,
    build: Any,
    out: ProbeOutput,
    meta: dict[str, Any],
    fields: dict[str, Any],
    head: str,
) -> list[dict[str, Any]]:
    """One model per input, each recorded at its own cell (val and test), so the analysis picks the best single
    input on val — by the mean over probe seeds when there are several; the best of this seed's heads is
    saved, and every val score is an artifact."""
    spec = run.specs[kind]
    best: tuple[Fitted, Input] | None = None
    scores, records = [], []
    for inp in inputs:
        feats = run.features([inp], grid="first")
        fitted = run.train(build([inp.dim], None, "mean"), feats, kind, variant, [inp])
        score = fitted.val_scores[spec.main_metric]
        scores.append(score)
        records += run.records(fitted, feats, kind, variant, [inp], **fields)
        if best is None or is_better(score, best[0].val_scores[spec.main_metric], spec.higher_is_better):
            best = (fitted, inp)
    assert best is not None  # inputs is never empty
    fitted, inp = best
    name = f"single_val_scores/{kind}"
    out.artifacts[name] = np.asarray(scores, dtype=np.float32)
    out.artifact_meta[name] = {
        **meta,
        "metric": spec.main_metric,
        "chosen": inputs.index(inp),
        "axes": "input",
    }
    name = run.state_dict_name(variant, kind, [inp])
    out.state_dicts[name] = cpu_state(fitted.model)
    kwargs = fusion_kwargs(run.cfg, [inp.dim], run.objective(kind).channels, None, "mean", head)
    out.state_specs[name] = head_spec(run, kind, [inp], kwargs)
    return records
