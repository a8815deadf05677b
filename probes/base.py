"""The probe contract: what a probe declares, what it fits on, and what it returns.

A probe is a :class:`Probe` subclass registered in :data:`probes.PROBES` under its ``name``. It declares

- what it is: ``trained`` (fitted from a seed: the pipeline fits it once per probe seed), ``per_cell`` (each of
  its rows scores one (layer, timestep) cell, so later stages may choose cells from its rows and layer ×
  timestep curves of it mean something), ``needs_cache`` (``False``: it fits on live features during
  extraction), ``joint`` (it can fit several backbones' features at once, given as ``extra`` sources),
  ``rows_version`` (raise it when the probe changes which rows it writes: earlier rows are then not "done"),
  ``zero_shot`` (it fits nothing on the targets, e.g. ``concept``: analysis draws fitted screens first) and
  ``answers(spec)`` (the target kinds it writes rows for; a run neither asks it for others nor counts them missing);
- its parameters: a ``Params`` dataclass with their defaults, built from a config mapping by
  :meth:`Probe.from_config` (an unknown name is an error naming the closest valid one);
- ``fit(train, val, test, kinds, ...)``: the probe on :class:`FeatureSource` s of the three splits, returning
  a :class:`ProbeOutput` — result records, heads (:class:`Head`, trained state dicts), artifacts for figures —
  that saves and loads its own heads (:meth:`ProbeOutput.save`, :meth:`ProbeOutput.load`).

A :class:`FeatureSource` is one split's features by (layer, timestep) key plus the dataset that provides its
targets: a feature cache (:class:`Split`) or a live adapter (:class:`probes.stream.LiveSource`), so one ridge
screen serves cached and streaming fits, and a trained probe fits on a cache or, in online mode, on features
extracted inside its training loop.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from backbones.base import FeatureKey
from backbones.store import FeatureCache, FeatureInfo, ShardedArray
from probebench.core.errors import ProbebenchError, closest_hint
from probebench.core.io import atomic_save_npy, atomic_write_bytes, atomic_write_json
from probebench.core.results import fmt_timestep
from tasks.base import Dataset, TargetSpec

Batches = Iterator[tuple[int, dict[FeatureKey, np.ndarray]]]


# -- what a probe fits on ----------------------------------------------------------------------------------------
@runtime_checkable
class FeatureSource(Protocol):
    """One split's features by (layer, timestep) key and the dataset that provides its targets.

    ``keys``: the keys it can give; ``info(key)``: their shape (N, h, w, C) and log-SNR; ``batches(keys, n)``:
    ``(start index, {key: (b, h, w, C) array})`` over consecutive images, at most ``n`` at a time, with values as
    the feature store stores them (fp16); ``features(indices, keys)``: ``{key: (len(indices), h, w, C) array}``
    of any images (a trained probe's shuffled batches), same values; ``hash``: what identifies the features (a
    cache's hash; result rows carry it as ``cache_hash``); ``fingerprint``: what made them, shaped like a cache's
    (``adapter``: the adapter's fingerprint, ``seed``: the noise seed); ``targets(start, stop, kind)``: the
    targets of those images.
    """

    dataset: Dataset

    @property
    def keys(self) -> list[FeatureKey]: ...

    @property
    def hash(self) -> str: ...

    @property
    def fingerprint(self) -> dict[str, Any]: ...

    def info(self, key: FeatureKey) -> FeatureInfo: ...

    def batches(self, keys: Sequence[FeatureKey], batch_size: int) -> Batches: ...

    def features(
        self, indices: Sequence[int], keys: Sequence[FeatureKey]
    ) -> dict[FeatureKey, np.ndarray]: ...

    def targets(self, start: int, stop: int, kind: str) -> np.ndarray: ...


@dataclass
class Split:
    """A split's cached features and the dataset that provides its targets (checked to match): the
    :class:`FeatureSource` of a feature cache."""

    cache: FeatureCache
    dataset: Dataset
    _arrays: dict[FeatureKey, ShardedArray] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        ids = [self.dataset.image_id(i) for i in range(len(self.dataset))]
        if ids != self.cache.image_ids:
            raise ProbebenchError(
                f"Cache {self.cache.path} was made for other images than {self.dataset.name}/{self.dataset.split} "
                f"({len(self.cache.image_ids)} cached vs {len(ids)} in the split, first ids "
                f"{self.cache.image_ids[:2]} vs {ids[:2]})."
            )

    @property
    def keys(self) -> list[FeatureKey]:
        return self.cache.keys

    @property
    def hash(self) -> str:
        return self.cache.hash

    @property
    def fingerprint(self) -> dict[str, Any]:
        return self.cache.fingerprint

    def info(self, key: FeatureKey) -> FeatureInfo:
        return self.cache.info(key)

    def batches(self, keys: Sequence[FeatureKey], batch_size: int) -> Batches:
        arrays = {key: self.cache.array(key) for key in keys}
        for start in range(0, len(self.dataset), batch_size):
            yield start, {key: arr[start : start + batch_size] for key, arr in arrays.items()}

    def features(self, indices: Sequence[int], keys: Sequence[FeatureKey]) -> dict[FeatureKey, np.ndarray]:
        """The cached features of images ``indices`` (read from the memory maps, opened once per key)."""
        idx = [int(i) for i in indices]
        consecutive = bool(idx) and idx == list(range(idx[0], idx[0] + len(idx)))
        out = {}
        for key in keys:
            key = (key[0], key[1])
            if key not in self._arrays:
                self._arrays[key] = self.cache.array(key)
            arr = self._arrays[key]
            out[key] = arr[idx[0] : idx[0] + len(idx)] if consecutive else np.stack([arr[i] for i in idx])
        return out

    def targets(self, start: int, stop: int, kind: str) -> np.ndarray:
        return np.stack(
            [self.dataset.load_target(i, kind) for i in range(start, min(stop, len(self.dataset)))]
        )


# -- what a probe returns ----------------------------------------------------------------------------------------
def _parse_timestep(text: str) -> Any:
    """A saved head's timestep (:func:`fmt_timestep`: ``none`` → None, ``500`` → 500, ``0.25`` → 0.25)."""
    if text == "none":
        return None
    value = float(text)
    return int(value) if value.is_integer() else value


@dataclass
class Head:
    """A fitted linear read-out on one (layer, timestep): ``x @ coef + intercept`` at feature resolution."""

    key: FeatureKey
    kind: str
    coef: np.ndarray  # (D, K)
    intercept: np.ndarray  # (K,)
    lam: float
    val_score: float

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=np.float64) @ self.coef + self.intercept

    def metadata(self, backbone: str, weights: str) -> dict[str, str]:
        """What ``<task>.safetensors`` and ``<task>.json`` say about the head (strings, as safetensors wants)."""
        return {
            "backbone": backbone,
            "weights": weights,
            "task": self.kind,
            "layer": str(self.key[0]),
            "timestep": fmt_timestep(self.key[1]),
            "lambda": str(self.lam),
            "val_score": str(self.val_score),
        }

    def save(self, directory: Path, *, backbone: str, weights: str, spec: TargetSpec) -> None:
        """``<task>.safetensors`` (float32 ``coef`` and ``intercept``, :meth:`metadata`) and ``<task>.json`` (the
        metadata and the target's label space: class names and ignore index, so figures can key the classes)."""
        from safetensors.numpy import save as to_bytes

        meta = self.metadata(backbone, weights)
        label_space = {"class_names": list(spec.class_names), "ignore_index": spec.ignore_index}
        atomic_write_bytes(  # a killed run never leaves a half-written head behind
            directory / f"{self.kind}.safetensors",
            to_bytes(
                {"coef": self.coef.astype(np.float32), "intercept": self.intercept.astype(np.float32)},
                metadata=meta,
            ),
        )
        atomic_write_json(directory / f"{self.kind}.json", {**meta, **label_space})

    @classmethod
    def load(cls, path: Path) -> Head:
        """A head saved by :meth:`save` (``coef`` and ``intercept`` as saved: float32)."""
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            coef, intercept = f.get_tensor("coef"), f.get_tensor("intercept")
        key = (int(meta["layer"]), _parse_timestep(meta["timestep"]))
        return cls(key, meta["task"], coef, intercept, float(meta["lambda"]), float(meta["val_score"]))


@dataclass
class ProbeOutput:
    """What a probe's ``fit`` returns.

    ``records``: one dict per (cell, task, split, metric) with keys ``layer`` (int or list of ints),
    ``timestep`` (native value, None, or a list), ``log_snr`` (float, None or a list), ``task``, ``split``,
    ``metric``, ``value`` and optionally ``lambda``, ``probe`` (a variant name such as ``fusion-spatial``),
    ``seed``, ``members``. ``best``: the best closed-form head per task (ridge). ``state_dicts``: trained heads
    to save as safetensors, by name; ``state_specs``: for some of them, what rebuilds them from their file alone
    (saved as the ``spec`` metadata). ``artifacts``: arrays to save as ``.npy`` for the analysis figures, by name
    (e.g. ``fusion_weights/segmentation`` of shape (N, T, h, w) for validation images, or
    ``global_weights/segmentation`` of shape (L, T)); ``artifact_meta``: JSON-able descriptions of them.
    """

    records: list[dict[str, Any]]
    best: dict[str, Head] = field(default_factory=dict)
    state_dicts: dict[str, dict[str, Any]] = field(default_factory=dict)
    state_specs: dict[str, dict[str, Any]] = field(
        default_factory=dict
    )  # by state-dict name: how to rebuild it
    artifacts: dict[str, np.ndarray] = field(default_factory=dict)
    artifact_meta: dict[str, dict[str, Any]] = field(default_factory=dict)

    def save(
        self,
        directory: Path,
        *,
        backbone: str,
        weights: str,
        stage: str,
        specs: Mapping[str, TargetSpec],
        probe_seed: int | None = None,
    ) -> None:
        """Write the heads into ``directory``: each best head (:meth:`Head.save`; ``specs`` give the label spaces),
        each trained state dict as ``<stage>_<name>[_seed<probe seed>].safetensors`` (``/`` in names → ``_``; the
        seed tag for seeded probes, so no seed overwrites another) and each artifact as ``<name>.npy`` +
        ``<name>.json`` (its meta, with the model and ``probe: <stage>``)."""
        from safetensors.torch import save as torch_to_bytes

        for kind, head in self.best.items():
            head.save(directory, backbone=backbone, weights=weights, spec=specs[kind])
        seed_tag = "" if probe_seed is None else f"_seed{probe_seed}"
        for name, sd in self.state_dicts.items():
            meta = {"backbone": backbone, "weights": weights, "probe": stage, "name": name}
            if probe_seed is not None:
                meta["probe_seed"] = str(probe_seed)
            if name in self.state_specs:
                meta["spec"] = json.dumps(self.state_specs[name], sort_keys=True)
            atomic_write_bytes(
                directory / f"{stage}_{name.replace('/', '_')}{seed_tag}.safetensors",
                torch_to_bytes({k: v.detach().cpu().contiguous() for k, v in sd.items()}, metadata=meta),
            )
        for name, arr in self.artifacts.items():
            stem = name.replace("/", "_")
            atomic_save_npy(directory / f"{stem}.npy", np.asarray(arr))
            atomic_write_json(
                directory / f"{stem}.json",
                {
                    "backbone": backbone,
                    "weights": weights,
                    "probe": stage,
                    **self.artifact_meta.get(name, {}),
                },
            )

    @classmethod
    def load(cls, directory: Path, stage: str | None = None) -> ProbeOutput:
        """The heads saved in ``directory`` by :meth:`save` (``records`` empty): best heads by task, state dicts
        by their saved ``name`` (``name#seed<n>`` for seeded ones) and artifacts by file stem; ``stage``: only
        that stage's state dicts and artifacts."""
        from safetensors import safe_open
        from safetensors.torch import load_file

        out = cls([])
        for path in sorted(Path(directory).glob("*.safetensors")):
            with safe_open(str(path), framework="numpy") as f:
                meta = f.metadata() or {}
            if "task" in meta and "probe" not in meta:
                out.best[meta["task"]] = Head.load(path)
            elif "name" in meta and stage in (None, meta.get("probe")):
                seed = meta.get("probe_seed")
                out.state_dicts[meta["name"] + ("" if seed is None else f"#seed{seed}")] = load_file(path)
        for path in sorted(Path(directory).glob("*.npy")):
            meta_file = path.with_suffix(".json")
            meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
            if "probe" in meta and stage in (None, meta["probe"]):
                out.artifacts[path.stem] = np.load(path)
                out.artifact_meta[path.stem] = {
                    k: v for k, v in meta.items() if k not in ("backbone", "weights", "probe")
                }
        return out


# -- the probe -------------------------------------------------------------------------------------------------
@dataclass
class NoParams:
    """A probe without parameters."""


class Probe:
    """Base of every probe (the module docstring has the contract). Subclasses set the class attributes, a
    ``Params`` dataclass and :meth:`fit`, and are registered in :data:`probes.PROBES`."""

    name: ClassVar[str] = ""
    trained: ClassVar[bool] = False  # fitted from a seed: fitted once per probe seed
    per_cell: ClassVar[bool] = False  # each row scores one (layer, timestep) cell
    needs_cache: ClassVar[bool] = True  # False: fits on live features (a probes.stream.LiveSource)
    joint: ClassVar[bool] = False  # can fit several backbones at once (``extra`` sources)
    rows_version: ClassVar[int | None] = None  # raised when the probe changes which rows it writes
    rows_probe: ClassVar[str | None] = None  # the ``probe`` its rows carry, when not its registered name
    zero_shot: ClassVar[bool] = False  # fits nothing on the targets (analysis prefers fitted screens' maps)
    Params: ClassVar[type] = NoParams

    def __init__(self, params: Any = None):
        self.params = self.Params() if params is None else params

    @classmethod
    def from_config(cls, params: Mapping[str, Any] | None = None) -> Probe:
        """The probe with ``params`` (a config's ``params:`` mapping) checked and filled in with defaults."""
        return cls(cls.parse_params(params or {}))

    @classmethod
    def parse_params(cls, params: Mapping[str, Any]) -> Any:
        """``Params`` from a mapping; an unknown name is an error naming the closest valid one."""
        valid = cls.param_names()
        for name in params:
            if name not in valid:
                raise ProbebenchError(
                    f"Unknown parameter {name!r} for probe {cls.name!r}."
                    + closest_hint(name, valid)
                    + f" Valid: {', '.join(valid)}."
                )
        return cls.Params(**params)

    @classmethod
    def param_names(cls) -> list[str]:
        return [f.name for f in fields(cls.Params)]

    def answers(self, spec: TargetSpec) -> bool:
        """Whether this probe writes rows for a task of ``spec``'s kind (default: every kind); a run does not
        ask it for the others, nor counts their rows as missing."""
        return True

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
        """Fit on ``train`` for every target kind of ``kinds``, choose on ``val``, score on ``val`` and ``test``.

        ``keys``: the (layer, timestep) keys to fit on (default: the probe's own, usually every key of
        ``train``); ``seed``: the probe seed (trained probes); ``extra``: other backbones' sources of the same
        images, ``{"train": [source, ...], "val": [...], "test": [...]}`` (joint probes only)."""
        raise NotImplementedError

    @classmethod
    def fit_with(
        cls,
        train: FeatureSource,
        val: FeatureSource,
        test: FeatureSource | None,
        kinds: Sequence[str],
        *,
        keys: Sequence[FeatureKey] | None = None,
        seed: int = 0,
        progress: bool = True,
        extra: Any = None,
        **params: Any,
    ) -> ProbeOutput:
        """The probe as a function: its parameters by keyword (checked as a stage's ``params:``), then
        :meth:`fit` (e.g. ``probes.linear.linear_probe = LinearProbe.fit_with``)."""
        probe = cls.from_config(params)
        return probe.fit(train, val, test, kinds, keys=keys, seed=seed, progress=progress, extra=extra)


def check_single(probe: str, extra: Any) -> None:
    """Refuse ``extra`` sources for a probe that fits one backbone at a time."""
    if extra:
        raise ProbebenchError(f"Probe {probe!r} fits one backbone at a time; drop `backbones:`.")
