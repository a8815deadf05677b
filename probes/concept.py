"""The zero-shot ``concept`` probe: concept-attention maps read as dense predictions, with no training.

Its features are the concept maps of a backbone configured with ``concepts: [...]``
(:mod:`backbones.diffusion.concepts`): per (layer, timestep) a softmax over the concept words at every image
token. Each target kind says how such probabilities answer it (:meth:`tasks.kinds.base.TargetKind.from_concepts`):
segmentation takes the argmax over concepts, each word standing for the class it names (background words for the
``background`` class); saliency is object vs background, the summed probability of the words that are not
background words. Kinds concept maps cannot answer (depth) get no rows.

Rows: every cell it reads (``probe: concept``) on val and test — the cell is chosen on val by the analysis, as for
every per-cell probe — and the maps averaged over all those cells (``probe: concept-mean``: the layer × timestep
average ConceptAttention reads, with its lists of layers and timesteps). It fits nothing, so its train split is
only checked to hold concept maps, and its seed changes nothing.

Artifact ``concept_maps`` (for the figures): the first few val images' maps at one layer (that of the val-best
segmentation cell, else the middle one) and every timestep read there, ordered noisy → clean.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from backbones.base import FeatureKey
from backbones.diffusion.concepts import PAIR_CHANNELS
from probebench.core.errors import ProbebenchError
from probes.base import FeatureSource, Probe, ProbeOutput, check_single
from probes.targets import upsample
from tasks.base import TargetSpec
from tasks.kinds.base import TargetKind


def concept_words(source: FeatureSource) -> tuple[tuple[str, ...], tuple[str, ...] | None]:
    """The words of a concept-map source's channels and, for object/background pair maps, its background
    channel's name (else None); an error when the source holds other features."""
    adapter = source.fingerprint.get("adapter", {})
    concepts = adapter.get("concepts") if isinstance(adapter, dict) else None
    if not concepts:
        raise ProbebenchError(
            f"Probe 'concept' reads concept-attention maps, but the features of {adapter.get('backbone', '?')} "
            "are not: give the backbone `concepts: [word, ...]` (an MM-DiT) and run the probe on it (select:)."
        )
    if "output" in concepts:
        return PAIR_CHANNELS, PAIR_CHANNELS[1:]
    return tuple(concepts["words"]), None


class ConceptProbe(Probe):
    """Zero-shot segmentation and saliency from concept maps (the module docstring has the rules)."""

    name = "concept"
    per_cell = True
    zero_shot = True

    @dataclass
    class Params:
        """``background``: the concept words that stand for no object (saliency's background; for segmentation,
        words that name no class but the ``background`` class); ``mean``: also score the maps averaged over every
        cell read; ``examples``: val images whose maps are saved for the figures; ``batch_size``."""

        background: list[str] = field(default_factory=lambda: ["background"])
        mean: bool = True
        examples: int = 4
        batch_size: int = 16

    def answers(self, spec: TargetSpec) -> bool:
        """The kinds that read concept maps (their kind defines
        :meth:`~tasks.kinds.base.TargetKind.from_concepts`)."""
        return type(spec.target_kind).from_concepts is not TargetKind.from_concepts

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
        check_single(self.name, extra)
        p = self.params
        words, pair_bg = concept_words(train)
        background = pair_bg or tuple(w for w in p.background if w in words)
        keys = [tuple(k) for k in (keys if keys is not None else train.keys)]
        specs = {k: val.dataset.target_spec(k) for k in kinds}
        answered = {k: s for k, s in specs.items() if self.answers(s)}
        out = ProbeOutput([])
        if not answered:
            return out
        infos = {key: train.info(key) for key in keys}
        for role, source in (("val", val), ("test", test)):
            if source is None:
                continue
            scores, mean_scores = self._score(source, keys, words, background, answered, progress, role)
            for key in keys:
                base = {"layer": key[0], "timestep": key[1], "log_snr": infos[key].log_snr}
                for kind, metrics in scores[key].items():
                    out.records += [
                        {**base, "task": kind, "split": role, "metric": m, "value": v}
                        for m, v in metrics.items()
                    ]
            if mean_scores:
                layers = sorted({k[0] for k in keys})
                steps = list(dict.fromkeys(k[1] for k in keys))
                snr = {k[1]: infos[k].log_snr for k in keys}
                base = {  # the grid averaged: its layers and timesteps (every key of the one, at the other)
                    "layer": layers,
                    "timestep": steps,
                    "log_snr": [snr[t] for t in steps],
                    "probe": "concept-mean",
                }
                for kind, metrics in mean_scores.items():
                    out.records += [
                        {**base, "task": kind, "split": role, "metric": m, "value": v}
                        for m, v in metrics.items()
                    ]
        self._examples(out, val, keys, words, infos, answered)
        return out

    def _score(
        self,
        source: FeatureSource,
        keys: list[FeatureKey],
        words: tuple[str, ...],
        background: tuple[str, ...],
        specs: dict[str, TargetSpec],
        progress: bool,
        role: str,
    ) -> tuple[dict[FeatureKey, dict[str, dict[str, float]]], dict[str, dict[str, float]]]:
        """Every cell's metrics per task on ``source``, and those of the cell-averaged maps, in one pass."""
        options = getattr(source.dataset, "eval_options", {})
        metrics = {
            (key, k): s.target_kind.make_metric(s, **options.get(k, {}))
            for key in keys
            for k, s in specs.items()
        }
        means = {k: s.target_kind.make_metric(s, **options.get(k, {})) for k, s in specs.items()}
        use_mean = self.params.mean and len(keys) > 1
        n = len(source.dataset)
        bar = tqdm(total=n, desc=f"concept probe ({role})", unit="img", disable=not progress)
        for start, feats in source.batches(keys, self.params.batch_size):
            b = len(next(iter(feats.values())))
            targets = {k: source.targets(start, start + b, k) for k in specs}
            total = None
            for key in keys:
                probs = np.asarray(feats[key], dtype=np.float32)
                total = probs.copy() if total is None else total + probs
                self._update(probs, words, background, specs, targets, {k: metrics[key, k] for k in specs})
            if use_mean and total is not None:
                self._update(total / len(keys), words, background, specs, targets, means)
            bar.update(b)
        bar.close()
        cells = {key: {k: metrics[key, k].compute() for k in specs} for key in keys}
        return cells, ({k: m.compute() for k, m in means.items()} if use_mean else {})

    @staticmethod
    def _update(
        probs: np.ndarray,
        words: tuple[str, ...],
        background: tuple[str, ...],
        specs: dict[str, TargetSpec],
        targets: dict[str, np.ndarray],
        metrics: dict[str, Any],
    ) -> None:
        for kind, spec in specs.items():
            pred = spec.target_kind.from_concepts(probs, words, background, spec)
            up = upsample(pred, targets[kind].shape[-2:])
            metrics[kind].update(spec.target_kind.decode(up, spec), targets[kind])

    def _examples(
        self,
        out: ProbeOutput,
        val: FeatureSource,
        keys: list[FeatureKey],
        words: tuple[str, ...],
        infos: dict[FeatureKey, Any],
        specs: dict[str, TargetSpec],
    ) -> None:
        """The ``concept_maps`` artifact: the first val images' maps at one layer, every timestep, noisy → clean."""
        n = min(self.params.examples, len(val.dataset))
        if n <= 0:
            return
        layer = self._layer(out, keys, specs)
        snr = {k: -np.inf if infos[k].log_snr is None else infos[k].log_snr for k in keys}
        row = sorted((k for k in keys if k[0] == layer), key=snr.__getitem__)  # noisy (left) → clean (right)
        feats = val.features(list(range(n)), row)
        maps = np.stack([np.asarray(feats[k], dtype=np.float32) for k in row], axis=1)  # (N, T, h, w, C)
        out.artifacts["concept_maps"] = maps.transpose(0, 4, 1, 2, 3)  # (N, C, T, h, w)
        ds = val.dataset
        out.artifact_meta["concept_maps"] = {
            "words": list(words),
            "layer": int(layer),
            "timesteps": [k[1] for k in row],
            "log_snr": [infos[k].log_snr for k in row],
            "axes": "image, concept, timestep, y, x",
            "split": ds.split,
            "image_ids": [ds.image_id(i) for i in range(n)],
        }

    @staticmethod
    def _layer(out: ProbeOutput, keys: list[FeatureKey], specs: dict[str, TargetSpec]) -> int:
        """The layer of the val-best cell of the first task concept maps answer (segmentation before saliency in
        a scenes run), else the middle layer read."""
        layers = sorted({k[0] for k in keys})
        for kind, spec in specs.items():
            rows = [
                r
                for r in out.records
                if r["task"] == kind
                and r["split"] == "val"
                and r["metric"] == spec.main_metric
                and "probe" not in r
            ]
            if rows:
                pick = max if spec.target_kind.higher_is_better else min
                return int(pick(rows, key=lambda r: r["value"])["layer"])
        return layers[len(layers) // 2]


concept_probe = ConceptProbe.fit_with  # the probe as a function, its parameters by keyword
