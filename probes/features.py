"""The inputs of a trained probe: feature maps of (layer, timestep) keys from one or several feature sources, and
the targets.

A source is any :class:`~probes.base.FeatureSource`: a feature cache (:class:`~probes.base.Split`) or a live
adapter (:class:`~probes.stream.LiveSource`: a stage's ``online: true``, features computed inside the training
loop and never stored). *Extra* sources hold other features of the same images: another backbone (the
complementarity experiment), or the same backbone extracted with other noise seeds (the noise control).

:class:`FeatureSet` gives the features of any images (shuffled training batches) through
``source.features(indices, keys)``: held in memory as fp16 when they fit a budget — read or extracted once —
else read per batch: from a cache's memory maps, or, for a live source, extracted again for every batch of every
epoch and every evaluation (the price of having no cache). Either way an input is the stored fp16 values,
resampled (bilinear) to its grid and rounded through fp16, so the numbers depend neither on the memory budget nor
on whether the features come from a cache or a live adapter.

An input may carry *cues*: maps of an extra source concatenated to its channels (each resampled to the input's
grid the same way), so a probe sees ``[features ; cues]`` as one input — e.g. concept-probability maps of the
same timestep beside a diffusion backbone's features (:func:`attach_cues`; the fusion probe's ``cues: true``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from backbones.base import FeatureKey
from probebench.core.errors import ProbebenchError
from probes.base import FeatureSource


# -- extra sources --------------------------------------------------------------------------------------------
@dataclass
class ExtraSource:
    """Other features of the same images, per split: another backbone (the complementarity experiment), or the
    same backbone extracted with another noise seed (the noise control of the fusion probe)."""

    train: FeatureSource
    val: FeatureSource
    test: FeatureSource | None = None
    keys: Sequence[FeatureKey] | None = None  # default: every key of the source
    name: str = ""

    def split(self, role: str) -> FeatureSource | None:
        return {"train": self.train, "val": self.val, "test": self.test}[role]


def image_ids(source: FeatureSource) -> list[str]:
    """The image ids of a source, in order (a cache's are checked to equal its dataset's)."""
    return [source.dataset.image_id(i) for i in range(len(source.dataset))]


def where(source: FeatureSource) -> str:
    """A source in messages: a cache's directory, or the live adapter and split."""
    cache = getattr(source, "cache", None)
    if cache is not None:
        return str(cache.path)
    return f"live features of {source_name(source)} on {source.dataset.name}/{source.dataset.split}"


def source_name(source: FeatureSource) -> str:
    """The backbone a source's features come from (``cache`` when its fingerprint does not say)."""
    return str(source.fingerprint.get("adapter", {}).get("backbone", "cache"))


def normalize_extra(
    extra: Any, train: FeatureSource, val: FeatureSource, test: FeatureSource | None
) -> list[ExtraSource]:
    """Accept ``{"train": [source, ...], "val": [...], "test": [...]}`` (what the pipeline passes), or a sequence
    of :class:`ExtraSource` / ``(train, val[, test])`` tuples; check that every source holds the same images."""
    if not extra:
        return []
    if isinstance(extra, Mapping):
        missing = [r for r in ("train", "val") if r not in extra]
        if missing:
            raise ProbebenchError(f"extra needs the splits train and val; it lacks {missing}.")
        n = len(extra["train"])
        tests = extra.get("test") or [None] * n
        if len(extra["val"]) != n or len(tests) != n:
            raise ProbebenchError("extra: train, val and test must list the same number of caches.")
        sources = [ExtraSource(a, b, c) for a, b, c in zip(extra["train"], extra["val"], tests)]
    else:
        sources = []
        for e in extra:
            if isinstance(e, ExtraSource):
                sources.append(e)
            elif isinstance(e, (tuple, list)) and len(e) in (2, 3):
                sources.append(ExtraSource(*e))
            else:
                raise ProbebenchError(
                    f"extra: expected ExtraSource or (train, val, test) Splits per extra cache, got {type(e)}."
                )
    for i, src in enumerate(sources):
        for role, main in (("train", train), ("val", val), ("test", test)):
            other = src.split(role)
            if main is None:
                continue
            if other is None:
                raise ProbebenchError(
                    f"extra cache {i + 1} has no {role} split, but the probe scores {role}."
                )
            if image_ids(other) != image_ids(main):
                raise ProbebenchError(
                    f"extra cache {where(other)} ({role}) holds other images than the main cache "
                    f"{where(main)}; extra caches must be made from the same dataset split."
                )
    return sources


# -- features -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Input:
    """One input map of a probe: a key of the main source (source 0) or of extra source ``source``, optionally
    with ``cues``: inputs of another source whose maps are concatenated to its channels, in order, each resampled
    to the input's grid (``dim`` counts them; ``own_dim`` is the key's own channels)."""

    source: int
    key: FeatureKey
    label: str  # "L002_T0.25", or "<backbone>:L011_Tnone" for an extra source; "L002_T0.25+cues" with cues
    log_snr: float | None
    dim: int
    grid: tuple[int, int]
    cues: tuple[Input, ...] = ()

    @property
    def own_dim(self) -> int:
        """The channels of the input's own key (``dim`` without its cues)."""
        return self.dim - sum(c.dim for c in self.cues)


def attach_cues(inputs: Sequence[Input], cues: Sequence[Input], source: str, what: str) -> list[Input]:
    """Each input with the ``cues`` at its own timestep attached (every cue whose timestep equals the input's, in
    the order given); ``source`` names the cues' source and ``what`` the probe in errors. An input whose timestep
    no cue has is an error: a cue of another timestep would give the timestep weights another meaning."""
    by_t: dict[Any, list[Input]] = {}
    for c in cues:
        if c.cues:
            raise ProbebenchError(f"{what}: the cue {c.label} carries cues itself; cues are plain maps.")
        by_t.setdefault(c.key[1], []).append(c)
    out = []
    for inp in inputs:
        parts = by_t.get(inp.key[1])
        if not parts:
            raise ProbebenchError(
                f"{what}: the input {inp.label} is at timestep {inp.key[1]!r}, but the cue source {source} has "
                f"no map there; its timesteps: {list(by_t)}. Extract the cues at every timestep of the main "
                "backbone (or select those keys)."
            )
        out.append(
            replace(
                inp,
                label=f"{inp.label}+cues",
                dim=inp.dim + sum(c.dim for c in parts),
                cues=(*inp.cues, *parts),
            )
        )
    return out


def to_grid(t: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """Float maps (B, C, h, w) resampled to ``grid`` as a head's inputs are (bilinear; antialiased when
    shrinking); unchanged when already on it."""
    g = tuple(int(v) for v in grid)
    if tuple(t.shape[-2:]) == g:
        return t
    shrink = g[0] < t.shape[-2] or g[1] < t.shape[-1]
    return F.interpolate(t, size=g, mode="bilinear", align_corners=False, antialias=shrink)


class FeatureSet:
    """The features of some inputs for one split as float32 tensors (B, C, h, w), by image indices.

    ``sources``: the main source and the extra ones (an input's ``source`` indexes them, and its cues' too). Held
    in memory as fp16 (N, C, h, w) when ``max_bytes`` allows (read, or extracted, once), else read per batch (a
    live source extracts again). ``grids``: per input, the grid to resample to (bilinear; antialiased when
    shrinking) or None; an input's cues are resampled to its grid and concatenated after its own channels.
    """

    def __init__(
        self,
        sources: Sequence[FeatureSource],
        inputs: Sequence[Input],
        grids: Sequence[tuple[int, int] | None],
        max_bytes: float,
        chunk: int = 256,
    ):
        self.inputs = list(inputs)
        self.sources = list(sources)
        self.grids = [g or i.grid for g, i in zip(grids, self.inputs)]
        lengths = {len(self.sources[c.source].dataset) for i in self.inputs for c in (i, *i.cues)}
        if len(lengths) != 1:
            raise ProbebenchError(f"Inputs {[i.label for i in self.inputs]} have different image counts.")
        self.n = lengths.pop()
        self._keys: dict[int, list[FeatureKey]] = {}  # source → the keys read from it (inputs' and cues')
        for inp in self.inputs:
            for part in (inp, *inp.cues):
                keys = self._keys.setdefault(part.source, [])
                if part.key not in keys:
                    keys.append(part.key)
        need = sum(self.n * g[0] * g[1] * i.dim * 2 for g, i in zip(self.grids, self.inputs))
        self.memory: list[torch.Tensor] | None = None
        if need <= max_bytes:
            parts = [self._read(np.arange(s, min(s + chunk, self.n))) for s in range(0, self.n, chunk)]
            self.memory = [torch.cat([p[j] for p in parts]) for j in range(len(self.inputs))]

    def __len__(self) -> int:
        return self.n

    def _convert(self, j: int, x: np.ndarray) -> torch.Tensor:
        return to_grid(torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float(), self.grids[j])

    def _read(self, idx: np.ndarray) -> list[torch.Tensor]:
        """Every input's fp16 (B, C, h, w) for images ``idx`` (its cues' channels after its own): one read (or
        extraction) per source."""
        feats = {s: self.sources[s].features(idx.tolist(), keys) for s, keys in self._keys.items()}
        out = []
        for j, inp in enumerate(self.inputs):
            x = self._convert(j, feats[inp.source][inp.key])
            if inp.cues:
                x = torch.cat([x, *(self._convert(j, feats[c.source][c.key]) for c in inp.cues)], 1)
            out.append(x.half())
        return out

    def batch(self, idx: np.ndarray) -> list[torch.Tensor]:
        idx = np.asarray(idx, dtype=np.int64)
        if self.memory is not None:
            ti = torch.from_numpy(idx)
            return [m[ti].float() for m in self.memory]
        # rounded through fp16 like the in-memory copy, so numbers do not depend on the memory budget
        return [t.float() for t in self._read(idx)]


# -- targets --------------------------------------------------------------------------------------------------
class TargetSet:
    """A split's targets of one kind at label resolution: (B, H, W) int64 / bool / float32 metres."""

    def __init__(self, split: FeatureSource, kind: str, max_bytes: float):
        self.split, self.kind = split, kind
        self.n = len(split.dataset)
        self.shape = np.shape(split.dataset.load_target(0, kind))
        first = self._load(0)
        self.memory: torch.Tensor | None = None
        if self.n * first.nbytes <= max_bytes:
            self.memory = torch.from_numpy(np.stack([self._load(i) for i in range(self.n)]))

    def _load(self, i: int) -> np.ndarray:
        t = np.asarray(self.split.dataset.load_target(i, self.kind))
        if t.shape != self.shape:
            raise ProbebenchError(
                f"{self.split.dataset.name}/{self.split.dataset.split}: {self.kind} targets differ in size "
                f"({t.shape} at image {i} vs {self.shape}); trained probes need one label size per split."
            )
        if t.dtype == np.int64 and (t.size == 0 or (t.min() >= 0 and t.max() <= np.iinfo(np.int16).max)):
            t = t.astype(np.int16)  # class ids: a quarter of the memory; the loss and metric take any int
        return t

    def batch(self, idx: np.ndarray) -> torch.Tensor:
        if self.memory is not None:
            return self.memory[torch.from_numpy(np.asarray(idx, dtype=np.int64))]
        return torch.from_numpy(np.stack([self._load(int(i)) for i in idx]))


__all__ = [
    "ExtraSource",
    "FeatureSet",
    "Input",
    "TargetSet",
    "attach_cues",
    "image_ids",
    "normalize_extra",
    "source_name",
    "where",
]
