"""Shared machinery of the trained probes (linear, fusion, light heads).

A trained probe is a ``nn.Module`` that takes a list of per-input feature maps ``[(B, C_i, h_i, w_i)]`` and
returns raw outputs (B, K, h, w) at its own resolution. This module supplies everything around it:

- the inputs (:mod:`probes.features`): (layer, timestep) keys of the main feature source and of *extra*
  sources of the same images (another backbone, or the same backbone extracted with other noise seeds), from a
  feature cache or, in online mode, from a live adapter (:class:`~probes.stream.LiveSource`), held in memory as
  fp16 when they fit a budget and read (or extracted) batch by batch otherwise, optionally resampled (bilinear)
  to one grid — the same numbers either way;
- the targets at label resolution; outputs are upsampled bilinearly to the label size for the loss and the
  metrics, so every probe is scored exactly as the ridge screen is;
- the losses, from the target kind's :class:`~tasks.kinds.Objective` (:func:`make_objective`): cross-entropy
  with the ignore index (segmentation), BCE with logits (saliency), and for depth the scale-invariant log loss
  on either the expectation over 256 log-spaced depth bins the head classifies into (DINOv2/v3;
  ``depth_loss="bins"``) or a directly regressed log-depth (``depth_loss="silog"``);
- a seeded AdamW + warm-up/cosine loop with early stopping on the validation split's main metric (the best
  state is kept), a NaN/inf guard that names the run, and one tqdm bar per run;
- records in the :class:`~probes.base.ProbeOutput` format, and :class:`TrainedProbe`, the base of these probes.

Determinism: every run re-seeds inside ``torch.random.fork_rng`` (model init, dropout) and shuffles with its
own ``torch.Generator``, so the same seed gives identical records on CPU, whatever else ran before.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from backbones.base import FeatureKey
from backbones.store import key_stem
from probebench.core.errors import ProbebenchError, did_you_mean
from probes.base import FeatureSource, Probe
from probes.features import (  # noqa: F401  (ExtraSource, normalize_extra: importable from here as before)
    ExtraSource,
    FeatureSet,
    Input,
    TargetSet,
    normalize_extra,
    source_name,
    where,
)
from tasks.base import TargetSpec
from tasks.kinds import Objective
from tasks.kinds.depth import DEPTH_LOSSES

ROLES = ("train", "val", "test")


# -- parameters -----------------------------------------------------------------------------------------------
@dataclass
class TrainConfig:
    """Optimisation settings shared by every trained probe (each is also a probe parameter)."""

    epochs: int = 20
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup: float = 0.1  # fraction of all steps with a linear warm-up, then cosine decay to 0
    patience: int = 5  # epochs without a better validation score before stopping; 0 = never stop early
    depth_loss: str = (
        "bins"  # "bins": classes over log-spaced depths, prediction = expectation; "silog": log-depth
    )
    depth_bins: int = 256
    class_balanced: bool = False  # inverse-frequency class weights in the segmentation/saliency loss
    device: str = "auto"  # "auto" = cuda when available, else cpu
    max_memory_gb: float = 8.0  # features and targets of a split are held in memory below this, else streamed

    def check(self, probe: str) -> None:
        bad = []
        if self.epochs < 1:
            bad.append(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            bad.append(f"batch_size must be >= 1, got {self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            bad.append(f"lr must be a positive number, got {self.lr}")
        if self.weight_decay < 0:
            bad.append(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.warmup < 1:
            bad.append(f"warmup is a fraction of the steps in [0, 1), got {self.warmup}")
        if self.patience < 0:
            bad.append(f"patience must be >= 0, got {self.patience}")
        if self.depth_loss not in DEPTH_LOSSES:
            bad.append(f"depth_loss must be one of {', '.join(DEPTH_LOSSES)}, got {self.depth_loss!r}")
        if self.depth_bins < 2:
            bad.append(f"depth_bins must be >= 2, got {self.depth_bins}")
        if bad:
            raise ProbebenchError(f"Probe {probe!r}: " + "; ".join(bad) + ".")

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            return torch.device(self.device)
        except RuntimeError as e:
            raise ProbebenchError(f"Unknown device {self.device!r}: {e}") from None


def _coerce(probe: str, name: str, value: Any, default: Any) -> Any:
    """Values from YAML/CLI to the default's type (ints stay ints, "1e-3" becomes a float)."""
    try:
        if default is None:
            return value
        if isinstance(default, (tuple, list)):
            if isinstance(value, (tuple, list)):
                return value
        elif isinstance(default, bool):
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no"):
                return value.lower() in ("true", "yes")
        elif isinstance(default, int):
            if not isinstance(value, bool) and float(value) == int(float(value)):
                return int(float(value))
        elif isinstance(default, float):
            if not isinstance(value, bool):
                return float(value)
        elif isinstance(default, str) and isinstance(value, str):
            return value
    except (TypeError, ValueError, OverflowError):
        pass
    kinds = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    raise ProbebenchError(
        f"Probe {probe!r}: parameter {name!r} must be {kinds.get(type(default), 'a list')}, got {value!r}."
    )


def resolve_params(
    probe: str,
    params: Mapping[str, Any],
    own: Mapping[str, Any],
    train_defaults: Mapping[str, Any] | None = None,
) -> tuple[TrainConfig, dict[str, Any]]:
    """Split ``params`` into the shared :class:`TrainConfig` (with the probe's ``train_defaults``) and the probe's
    ``own`` parameters (defaults given); an unknown name is an error naming the closest valid ones."""
    train_names = [f.name for f in fields(TrainConfig)]
    valid = sorted({*train_names, *own})
    cfg = TrainConfig(**dict(train_defaults or {}))
    mine = dict(own)
    for name, value in params.items():
        if name in own:
            mine[name] = _coerce(probe, name, value, own[name])
        elif name in train_names:
            setattr(cfg, name, _coerce(probe, name, value, getattr(TrainConfig(), name)))
        else:
            close = did_you_mean(name, valid, n=2)
            close += [
                v
                for v in valid
                if v not in close and len(v) > 1 and (name.startswith(v) or v.startswith(name))
            ]
            hint = (
                " (λ is a parameter of the ridge screen only)" if name in ("lambda", "lambdas", "lam") else ""
            )
            raise ProbebenchError(
                f"Unknown parameter {name!r} for probe {probe!r}{hint}."
                + (f" Did you mean: {', '.join(close)}?" if close else "")
                + f" Valid: {', '.join(valid)}."
            )
    cfg.check(probe)
    return cfg, mine


class TrainedProbe(Probe):
    """Base of the probes trained from a seed on feature sources (a cache, or a live adapter in online mode).
    Their ``Params`` extend :class:`TrainConfig` (every training setting is also a probe parameter; a subclass may
    change its defaults); values from YAML or the command line are coerced to the defaults' types and checked
    (:func:`resolve_params`)."""

    trained = True
    joint = True
    Params: ClassVar[type] = TrainConfig

    @classmethod
    def parse_params(cls, params: Mapping[str, Any]) -> Any:
        defaults, train_names = cls.Params(), [f.name for f in fields(TrainConfig)]
        own = {f.name: getattr(defaults, f.name) for f in fields(cls.Params) if f.name not in train_names}
        cfg, mine = resolve_params(cls.name, params, own, {n: getattr(defaults, n) for n in train_names})
        return cls.Params(**{n: getattr(cfg, n) for n in train_names}, **mine)

    @classmethod
    def param_names(cls) -> list[str]:
        return sorted(f.name for f in fields(cls.Params))


def parse_keys(value: Any, what: str) -> list[FeatureKey]:
    """``[[layer, t], ...]`` (tuples, lists, YAML) → a list of ``(layer, t)`` keys."""
    out = []
    for k in value:
        if not isinstance(k, (tuple, list)) or len(k) != 2 or not isinstance(k[0], (int, np.integer)):
            raise ProbebenchError(f"{what}: expected (layer, timestep) pairs, got {k!r}.")
        out.append((int(k[0]), k[1]))
    return out


# -- task objectives ------------------------------------------------------------------------------------------
def make_objective(spec: TargetSpec, cfg: TrainConfig, class_weights: np.ndarray | None = None) -> Objective:
    """The target kind's :class:`~tasks.kinds.Objective` (output channels, loss at label resolution, decoding)
    under the settings ``cfg`` (e.g. ``depth_loss`` and ``depth_bins`` for depth)."""
    return spec.target_kind.objective(
        spec, {f.name: getattr(cfg, f.name) for f in fields(cfg)}, class_weights
    )


def upsample_to(out: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Raw outputs (B, K, h, w) → label size, bilinearly."""
    if tuple(out.shape[-2:]) == tuple(size):
        return out
    return F.interpolate(out, size=tuple(size), mode="bilinear", align_corners=False)


# -- the training loop -----------------------------------------------------------------------------------------
@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's global RNG for model init and dropout without disturbing the caller's RNG state."""
    devices = (
        [device.index if device.index is not None else torch.cuda.current_device()]
        if device.type == "cuda"
        else []
    )
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@dataclass
class Fitted:
    """A trained probe with its best state loaded, and how it got there."""

    model: nn.Module
    val_scores: dict[str, float]
    best_epoch: int
    epochs_run: int
    history: list[dict[str, float]] = field(default_factory=list)  # epoch 0 = untrained


def is_better(a: float, b: float, higher: bool) -> bool:
    """Whether score ``a`` beats ``b`` (a non-finite score never beats anything; anything beats one)."""
    if not math.isfinite(a):
        return False
    return not math.isfinite(b) or (a > b if higher else a < b)


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _optimizer(model: nn.Module, cfg: TrainConfig, steps: int) -> tuple[torch.optim.Optimizer, Any]:
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for p in model.parameters():
        if p.requires_grad:  # weight decay on weights only; a parameter may carry its own ``lr_mult``
            key = (float(getattr(p, "lr_mult", 1.0)), cfg.weight_decay if p.ndim > 1 else 0.0)
            groups.setdefault(key, []).append(p)
    opt = torch.optim.AdamW(
        [{"params": ps, "lr": cfg.lr * m, "weight_decay": wd} for (m, wd), ps in groups.items()], lr=cfg.lr
    )
    warm = round(cfg.warmup * steps)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def evaluate(
    model: nn.Module,
    feats: FeatureSet,
    targets: TargetSet,
    objective: Objective,
    *,
    batch_size: int,
    device: torch.device,
    options: Mapping[str, Any] | None = None,
    run: str = "",
) -> dict[str, float]:
    """Score ``model`` on a split at label resolution with the task's metric."""
    metric = objective.spec.target_kind.make_metric(objective.spec, **dict(options or {}))
    model.eval()
    with torch.no_grad():
        for s in range(0, len(feats), batch_size):
            idx = np.arange(s, min(s + batch_size, len(feats)))
            y = targets.batch(idx)
            out = upsample_to(
                objective.prepare(model([x.to(device) for x in feats.batch(idx)])), y.shape[-2:]
            )
            if not torch.isfinite(out).all():
                raise ProbebenchError(f"{run}: the probe outputs NaN or inf; no results were written.")
            metric.update(objective.decode(out).cpu().numpy(), y.numpy())
    return metric.compute()


def fit(
    model: nn.Module,
    train: tuple[FeatureSet, TargetSet],
    val: tuple[FeatureSet, TargetSet],
    objective: Objective,
    cfg: TrainConfig,
    *,
    seed: int,
    run: str,
    progress: bool = True,
    eval_options: Mapping[str, Any] | None = None,
) -> Fitted:
    """Train ``model`` with AdamW + warm-up/cosine on shuffled batches of ``train``; after every epoch score
    ``val`` and keep the best state; stop after ``cfg.patience`` epochs without improvement. ``run`` names the
    run (probe, task, cell) in errors. The caller seeds model init (see :func:`seeded`)."""
    device = cfg.torch_device()
    model.to(device)
    xs, ys = train
    n = len(xs)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    opt, sched = _optimizer(model, cfg, cfg.epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(seed)
    spec = objective.spec
    main = spec.main_metric

    def score() -> dict[str, float]:
        return evaluate(
            model, *val, objective, batch_size=cfg.batch_size, device=device, options=eval_options, run=run
        )

    scores = score()
    history = [{"epoch": 0, "loss": math.nan, main: scores[main]}]
    best_scores, best_state, best_epoch, stale = scores, copy.deepcopy(model.state_dict()), 0, 0
    bar = tqdm(range(1, cfg.epochs + 1), desc=run, unit="epoch", leave=False, disable=not progress)
    epoch = 0
    for epoch in bar:
        model.train()
        total, count = 0.0, 0
        for b in torch.randperm(n, generator=gen).split(cfg.batch_size):
            idx = np.sort(b.numpy())
            y = ys.batch(idx).to(device)
            out = upsample_to(objective.prepare(model([x.to(device) for x in xs.batch(idx)])), y.shape[-2:])
            loss = objective.loss(out, y)
            reg = model.regularization() if hasattr(model, "regularization") else None
            if reg is not None:  # a probe's own training-only term (e.g. the fusion gate's entropy bonus)
                loss = loss + reg
            if not torch.isfinite(loss):
                bar.close()
                raise ProbebenchError(
                    f"{run}: training diverged (loss {loss.item()} at epoch {epoch}); stopped, no results "
                    "were written. Check the features for NaN/inf, or try a lower lr."
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            count += len(idx)
        scores = score()
        history.append({"epoch": epoch, "loss": total / count, main: scores[main]})
        bar.set_postfix(loss=f"{total / count:.4f}", **{main: f"{scores[main]:.4f}"})
        if best_epoch == 0 or is_better(scores[main], best_scores[main], spec.higher_is_better):
            best_scores, best_state, best_epoch, stale = scores, copy.deepcopy(model.state_dict()), epoch, 0
        else:
            stale += 1
            if cfg.patience and stale >= cfg.patience:
                break
    bar.close()
    model.load_state_dict(best_state)
    model.eval()
    return Fitted(model, best_scores, best_epoch, epoch, history)


# -- one probe call over cells and tasks -----------------------------------------------------------------------
def describe_inputs(inputs: Sequence[Input]) -> dict[str, Any]:
    """``layer``, ``timestep``, ``log_snr`` of a record: scalars for one distinct value, lists (in input order,
    duplicates dropped) for several; ``inputs``: every input's label."""

    def distinct(values: list[Any]) -> list[Any]:
        out: list[Any] = []
        for v in values:
            if v not in out:
                out.append(v)
        return out

    layers = distinct([i.key[0] for i in inputs])
    pairs = distinct([(i.key[1], i.log_snr) for i in inputs])
    ts = [p[0] for p in pairs]
    if len(distinct(ts)) != len(ts):  # same timestep, other log-SNR (another backbone family)
        pairs = [(t, None) for t in distinct(ts)]
    return {
        "layer": layers[0] if len(layers) == 1 else layers,
        "timestep": pairs[0][0] if len(pairs) == 1 else [p[0] for p in pairs],
        "log_snr": pairs[0][1] if len(pairs) == 1 else [p[1] for p in pairs],
        "inputs": [i.label for i in inputs],
    }


def cell_name(inputs: Sequence[Input]) -> str:
    """A short file-system name of a cell: ``L2_T0.25``, ``L1+2_Tnone``, ``L1_T0+0.5``; keys of extra cache ``s``
    follow as ``+x<s>-L11_Tnone``; inputs with cues end in ``+cues``."""
    from probebench.core.results import fmt_layers, fmt_timestep

    parts = []
    for s in sorted({i.source for i in inputs}):
        d = describe_inputs([i for i in inputs if i.source == s])
        name = f"L{fmt_layers(d['layer'])}_T{fmt_timestep(d['timestep'])}"
        parts.append(name if s == 0 else f"x{s}-{name}")
    if any(i.cues for i in inputs):
        parts.append("cues")
    return "+".join(parts)


class ProbeRun:
    """One call of a trained probe: its feature sources (main + extra: caches or live adapters), parameters,
    targets and objectives."""

    def __init__(
        self,
        probe: str,
        train: FeatureSource,
        val: FeatureSource,
        test: FeatureSource | None,
        kinds: Sequence[str],
        *,
        cfg: TrainConfig,
        seed: int,
        progress: bool,
        extra: Any = None,
    ):
        self.probe, self.cfg, self.seed, self.progress = probe, cfg, int(seed), progress
        self.kinds = list(kinds)
        if not self.kinds:
            raise ProbebenchError(f"Probe {probe!r}: no task to fit.")
        self.specs = {k: train.dataset.target_spec(k) for k in self.kinds}
        for s in (val, test):
            if s is not None:
                for k in self.kinds:
                    s.dataset.target_spec(k)
        self.extras = normalize_extra(extra, train, val, test)
        self.splits: dict[str, list[FeatureSource] | None] = {
            "train": [train, *(e.train for e in self.extras)],
            "val": [val, *(e.val for e in self.extras)],
            "test": None if test is None else [test, *(e.test for e in self.extras)],  # type: ignore[list-item]
        }
        self.device = cfg.torch_device()
        self.max_bytes = cfg.max_memory_gb * 2**30 / 3
        self._targets: dict[tuple[str, str], TargetSet] = {}
        self._objectives: dict[str, Objective] = {}
        self.source_names = [source_name(train)]  # labels of extra inputs: "<name>:L011_Tnone"
        for s, e in enumerate(self.extras, start=1):
            fp = e.train.fingerprint
            base = e.name or source_name(e.train)
            weights, seed = fp.get("adapter", {}).get("weights"), fp.get("seed")
            candidates = [base, f"{base}@{weights}" if weights else None, f"{base}#seed{seed}", f"{base}#{s}"]
            self.source_names.append(next(c for c in candidates if c and c not in self.source_names))

    @property
    def main(self) -> FeatureSource:
        return self.splits["train"][0]  # type: ignore[index]

    def inputs(self, keys: Sequence[FeatureKey], source: int = 0) -> list[Input]:
        src = self.splits["train"][source]  # type: ignore[index]
        out = []
        for key in keys:
            info = src.info(tuple(key))
            for role in ("val", "test"):
                sp = self.splits[role]
                if sp is not None and sp[source].info(info.key).shape[1:] != info.shape[1:]:
                    raise ProbebenchError(
                        f"Feature {info.key} has shape {info.shape[1:]} in train but "
                        f"{sp[source].info(info.key).shape[1:]} in {role}."
                    )
            prefix = f"{self.source_names[source]}:" if source else ""
            out.append(
                Input(
                    source,
                    info.key,
                    prefix + key_stem(info.key),
                    info.log_snr,
                    info.shape[3],
                    info.shape[1:3],
                )
            )
        return out

    def extra_inputs(self, extra_keys: Sequence[FeatureKey] | None = None) -> list[Input]:
        """Every extra source's keys (its own ``keys``, else ``extra_keys``, else all), in source order."""
        out = []
        for s, e in enumerate(self.extras, start=1):
            src = e.train
            keys = e.keys if e.keys is not None else extra_keys
            if keys is None:
                keys = src.keys
            else:
                keys = [k for k in keys if tuple(k) in src.keys] or self._missing(src, keys)
            out += self.inputs(keys, s)
        return out

    @staticmethod
    def _missing(src: FeatureSource, keys: Sequence[FeatureKey]) -> list[FeatureKey]:
        raise ProbebenchError(f"None of the extra keys {list(keys)} is in {where(src)} ({src.keys}).")

    def features(self, inputs: Sequence[Input], grid: str = "first") -> dict[str, FeatureSet | None]:
        """Feature sets per split. ``grid="first"`` resamples every input to the first input's grid;
        ``"native"`` keeps each input's grid (heads with their own multi-scale handling)."""
        if not inputs:
            raise ProbebenchError(f"Probe {self.probe!r}: no input keys to fit on.")
        grids = [inputs[0].grid if grid == "first" else None for _ in inputs]
        return {
            role: None
            if self.splits[role] is None
            else FeatureSet(self.splits[role], inputs, grids, self.max_bytes)  # type: ignore[arg-type]
            for role in ROLES
        }

    def targets(self, role: str, kind: str) -> TargetSet:
        if (role, kind) not in self._targets:
            self._targets[role, kind] = TargetSet(self.splits[role][0], kind, self.max_bytes)  # type: ignore[index]
        return self._targets[role, kind]

    def objective(self, kind: str) -> Objective:
        if kind not in self._objectives:
            spec, ds = self.specs[kind], self.main.dataset
            weights = None  # inverse class frequencies; None for a kind without classes
            if self.cfg.class_balanced:
                weights = spec.target_kind.class_weights(
                    (ds.load_target(i, kind) for i in range(len(ds))), spec
                )
            self._objectives[kind] = make_objective(spec, self.cfg, weights)
        return self._objectives[kind]

    def eval_options(self, role: str, kind: str) -> dict[str, Any]:
        return getattr(self.splits[role][0].dataset, "eval_options", {}).get(kind, {})  # type: ignore[index]

    def train(
        self,
        build: Callable[[], nn.Module],
        feats: Mapping[str, FeatureSet | None],
        kind: str,
        variant: str,
        inputs: Sequence[Input],
    ) -> Fitted:
        """Build (seeded) and fit one model for one task."""
        run = f"probe {variant}, task {kind}, cell {cell_name(inputs)}"
        with seeded(self.seed, self.device):
            model = build()
            return fit(
                model,
                (feats["train"], self.targets("train", kind)),  # type: ignore[arg-type]
                (feats["val"], self.targets("val", kind)),  # type: ignore[arg-type]
                self.objective(kind),
                self.cfg,
                seed=self.seed,
                run=run,
                progress=self.progress,
                eval_options=self.eval_options("val", kind),
            )

    def score(
        self, fitted: Fitted, feats: Mapping[str, FeatureSet | None], kind: str, role: str, run: str
    ) -> dict[str, float]:
        return evaluate(
            fitted.model,
            feats[role],  # type: ignore[arg-type]
            self.targets(role, kind),
            self.objective(kind),
            batch_size=self.cfg.batch_size,
            device=self.device,
            options=self.eval_options(role, kind),
            run=run,
        )

    def records(
        self,
        fitted: Fitted,
        feats: Mapping[str, FeatureSet | None],
        kind: str,
        variant: str,
        inputs: Sequence[Input],
        **extra_fields: Any,
    ) -> list[dict[str, Any]]:
        """Val (best state) and test records of a fitted model."""
        base = {
            **describe_inputs(inputs),
            "task": kind,
            "probe": variant,
            "seed": self.seed,
            "best_epoch": fitted.best_epoch,
            "epochs_run": fitted.epochs_run,
            "trained_params": trainable_parameters(fitted.model),
            **extra_fields,
        }
        # rows name the split's role (val: where cells and epochs are chosen; test: what is reported), whatever
        # dataset split plays it (data.val_split, e.g. train[-1000:])
        out = [{**base, "split": "val", "metric": m, "value": v} for m, v in fitted.val_scores.items()]
        if feats.get("test") is not None:
            run = f"probe {variant}, task {kind}, cell {cell_name(inputs)}"
            scores = self.score(fitted, feats, kind, "test", run)
            out += [{**base, "split": "test", "metric": m, "value": v} for m, v in scores.items()]
        return out

    def state_dict_name(self, variant: str, kind: str, inputs: Sequence[Input]) -> str:
        return f"{variant}/{kind}/{cell_name(inputs)}"


def head_spec(run: ProbeRun, kind: str, inputs: Sequence[Input], kwargs: dict[str, Any]) -> dict[str, Any]:
    """What rebuilds and applies a trained head without the run's config (saved as the ``spec`` metadata of its
    file): the model's constructor arguments, its inputs in order (source, layer, timestep, log-SNR, width, grid;
    all resampled to the first input's grid), the objective options and the label space.

    Inputs with cues (maps of another source concatenated to an input's channels) say so twice, and only then:
    each such input's entry has ``cues``, its cue maps in order as entries of the same form (their ``source``
    indexes the run's sources; ``dim`` of the input itself stays its own key's width, the model's ``in_dims``
    count the cues), and the spec has ``cues``: ``{"sources": [...], "names": [...]}``, the cue sources — what a
    reader that feeds one backbone's maps checks to refuse (or rebuild) such a head."""

    def finite(x: Any) -> Any:
        return x if x is None or math.isfinite(x) else None

    def entry(i: Input) -> dict[str, Any]:
        out = {
            "source": i.source,
            "layer": i.key[0],
            "timestep": i.key[1],
            "log_snr": finite(i.log_snr),
            "dim": i.own_dim,
            "grid": list(i.grid),
        }
        if i.cues:
            out["cues"] = [entry(c) for c in i.cues]
        return out

    spec = {
        "format": 1,
        "probe": run.probe,
        "task": kind,
        "kwargs": kwargs,
        "inputs": [entry(i) for i in inputs],
        "grid": "first",
        "objective": {"depth_loss": run.cfg.depth_loss, "depth_bins": run.cfg.depth_bins},
        "target_spec": asdict(run.specs[kind]),
    }
    cue_sources = sorted({c.source for i in inputs for c in i.cues})
    if cue_sources:
        spec["cues"] = {"sources": cue_sources, "names": [run.source_names[s] for s in cue_sources]}
    return spec


def cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached, contiguous CPU copy of a model's state (what safetensors saves)."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
