"""The target-kind contract: what a kind of dense target (segmentation, saliency, depth, ...) must know.

Probes and analysis never branch on a kind's name: they resolve a :class:`~tasks.base.TargetSpec`'s kind
(``spec.target_kind``) and call it. A kind object is stateless (the spec, which carries the dataset's label
space and depth range, is passed to every method), so one instance per kind serves every dataset.

A :class:`TargetKind` owns, for its kind:

- **metrics**: ``metrics`` (name → higher is better, in the order its metric reports them), ``main_metric``,
  and ``make_metric(spec, **options)``, the accumulator of :mod:`tasks.metrics` that scores predictions;
- **closed-form (ridge) probes**: ``num_outputs`` (columns regressed), ``soft_targets`` (the targets averaged
  over each feature cell, with a weight per cell), ``class_frequencies`` / ``class_weights`` (inverse
  frequency; ``None`` for kinds without classes), ``balance_weights`` (cell weights × class weights),
  ``decode`` (regressed outputs, upsampled → what the metric scores) and ``lambda_criterion`` (the cheap score
  that picks λ on the validation split, with its direction);
- **trained probes**: ``objective_class`` (or ``objective(spec, options, class_weights)``) → an :class:`Objective` (output channels,
  loss at label resolution, prepare, decode), ``default_head`` and the ``heads`` that fit the kind;
- **zero-shot** (optional): ``from_concepts`` (concept-attention probabilities → the kind's outputs, for the
  ``concept`` probe; ``None`` for a kind concept maps cannot answer, e.g. depth);
- **analysis**: ``error_mask`` (wrong/valid pixels for error overlap) and its one-line ``error_criterion``, and
  ``panels`` (how prediction figures draw and key its maps; :func:`class_palette` sizes class colours to the
  label space);
- **reading from disk** (all optional): ``read_target`` (a target file → the array datasets return) and
  ``check_target`` (refuse values such a target cannot hold), and for the ``folder`` dataset (:mod:`tasks.loaders`)
  ``folder`` and ``extensions`` (its subfolder and file types; default ``<kind name>/`` of PNGs), ``meta_keys``
  and ``spec_from_meta`` (the ``dataset.yaml`` keys it reads and the :class:`~tasks.base.TargetSpec` built from
  them). So a kind a plugin adds is read from a ``folder`` dataset without editing the loaders.

``check(spec)`` refuses a spec the kind cannot serve (a segmentation target without classes). Numerical code
uses torch and figure code matplotlib, both imported inside the methods, so that ``import tasks`` and building
a :class:`~tasks.base.TargetSpec` stay light.
"""

from __future__ import annotations

import colorsys
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np
from PIL import Image

from probebench.core.errors import ProbebenchError

if TYPE_CHECKING:
    import torch

    from tasks.base import TargetSpec


DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


# -- shared helpers -------------------------------------------------------------------------------------------
def open_image(path: Path) -> Image.Image:
    """The decoded image at ``path`` (pixels loaded, file closed), or a ProbebenchError naming the file."""
    try:
        with Image.open(path) as im:
            im.load()
    except FileNotFoundError as e:
        raise ProbebenchError(f"Missing file {path}.") from e
    except DECODE_ERRORS as e:
        raise ProbebenchError(f"Cannot read image {path}: {e}") from e
    return im


def meta_number(meta: Mapping[str, Any], key: str, default: float, where: Path | str) -> float:
    """``meta[key]`` (``default`` when absent) as a float; a ProbebenchError naming ``where`` if it is not a
    number."""
    value = meta.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ProbebenchError(f"{where}: {key} must be a number, got {value!r}.")
    return float(value)


def area_mean(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Area average of (B, C, H, W) to (B, C, h, w): a target's share of each feature cell."""
    import torch.nn.functional as F

    return F.adaptive_avg_pool2d(x, hw)


def inverse_frequency_weights(counts: np.ndarray) -> np.ndarray:
    """w_c = N / (K_present · N_c) for present classes (mean weight 1 over pixels), 0 for absent ones."""
    present = counts > 0
    w = np.zeros_like(counts)
    w[present] = counts.sum() / (present.sum() * counts[present])
    return w


def class_palette(n: int) -> list[tuple[float, float, float]]:
    """``n`` distinct RGB colours, none of them black: tab10 up to 10 classes, tab20 up to 20, beyond that
    hues spaced by the golden ratio at three lightness and two saturation levels, so neighbouring class ids
    get far-apart colours (a 150-class ADE20K map stays readable)."""
    if n <= 0:
        return []
    if n <= 20:
        import matplotlib.pyplot as plt

        cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
        return [tuple(float(c) for c in cmap(i)[:3]) for i in range(n)]
    out = []
    for i in range(n):
        hue = (i * 0.6180339887498949) % 1.0
        light = (0.45, 0.62, 0.78)[i % 3]
        sat = (0.85, 0.55)[(i // 3) % 2]
        out.append(colorsys.hls_to_rgb(hue, light, sat))
    return out


def with_bad(cmap: Any, color: tuple[float, float, float]) -> Any:
    """A copy of the colour map ``cmap`` (a name or a Colormap) that draws masked (not scored) pixels in
    ``color``."""
    import matplotlib.pyplot as plt

    return plt.get_cmap(cmap).with_extremes(bad=color)


@dataclass
class Panels:
    """What one task draws in a prediction figure: images for its target and prediction columns, and how to
    key them."""

    target: np.ndarray  # (n, H, W), masked where not scored
    pred: np.ndarray
    imshow: dict[str, Any]  # keyword arguments of ``imshow`` (cmap, vmin, vmax, ...)
    legend: list[Any]  # matplotlib handles of the key under the column pair (empty: none)
    legend_title: str = ""
    colorbar: str = ""  # colour-bar label (empty: none)
    colorbar_extend: str = "neither"


def save_png(array: np.ndarray, path: Path) -> None:
    """Write ``array`` as a PNG (mode from its dtype: uint8 → L, uint16 → 16-bit), its folder created."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def continuous_panels(target: np.ndarray, pred: np.ndarray) -> Panels:
    """Any dense target: one shared linear scale over the shown targets, with a colour bar (the default of
    :meth:`TargetKind.panels`, and what figures use for a task whose kind is not registered)."""
    t = np.ma.masked_invalid(np.asarray(target, dtype=np.float64))
    lo, hi = (float(t.min()), float(t.max())) if t.count() else (0.0, 1.0)
    return Panels(
        t,
        np.ma.masked_invalid(np.asarray(pred, dtype=np.float64)),
        {"cmap": "viridis", "vmin": lo, "vmax": max(hi, lo + 1e-6)},
        [],
        colorbar="value",
        colorbar_extend="both",
    )


# -- λ criteria -----------------------------------------------------------------------------------------------
class LambdaCriterion(Protocol):
    """One number that ranks the ridge screen's λ values on the validation split, accumulated over batches of
    decoded predictions and targets at label resolution."""

    higher_is_better: bool

    def update(self, pred: Any, target: Any) -> None: ...

    def compute(self) -> float: ...


class MetricCriterion:
    """A metric accumulator's value ``name`` as a λ criterion (the main metric, for most kinds)."""

    def __init__(self, metric: Any, name: str, higher_is_better: bool):
        self.metric, self.name, self.higher_is_better = metric, name, higher_is_better

    def update(self, pred: Any, target: Any) -> None:
        self.metric.update(pred, target)

    def compute(self) -> float:
        return self.metric.compute()[self.name]


# -- trained-probe objectives ---------------------------------------------------------------------------------
class Objective(ABC):
    """A trained probe's view of a target kind: output channels, loss at label resolution, and decoding.

    The training loop calls ``prepare`` on the raw outputs at feature resolution, upsamples the result to the
    label size, then ``loss`` (training) or ``decode`` (what the metric scores). ``options`` are the trained
    probe's settings (:class:`probes.training.TrainConfig` as a dict); a kind reads the ones it knows.
    """

    def __init__(
        self,
        spec: TargetSpec,
        class_weights: np.ndarray | None = None,
        options: Mapping[str, Any] | None = None,
    ):
        import torch

        self.spec = spec
        self.options = dict(options or {})
        self.class_weights = None if class_weights is None else torch.as_tensor(class_weights).float()

    @property
    @abstractmethod
    def channels(self) -> int:
        """Output channels the probe's head must produce."""

    @abstractmethod
    def loss(self, up: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``up``: prepared outputs upsampled to label size (B, K, H, W); ``target``: (B, H, W)."""

    def prepare(self, out: torch.Tensor) -> torch.Tensor:
        """Raw outputs at feature resolution → what is upsampled to label size (default: unchanged)."""
        return out

    @abstractmethod
    def decode(self, up: torch.Tensor) -> torch.Tensor:
        """Upsampled prepared outputs → what the metric scores."""


# -- the contract ---------------------------------------------------------------------------------------------
class TargetKind(ABC):
    """One kind of dense target. Subclass it in one file, set the class attributes, implement the abstract
    methods (and :attr:`objective_class` or :meth:`objective` for trained probes) and register the class: ``@TARGET_KINDS.register(name)``
    or the entry-point group ``probebench.kinds``. The module docstring says what each part is used for."""

    name: ClassVar[str] = ""
    metrics: ClassVar[dict[str, bool]] = {}  # metric name → higher is better, in the metric's order
    main_metric: ClassVar[str] = ""  # early stopping, best cells, tables and figures
    default_head: ClassVar[str] = "linear"  # the trained head ``head="auto"`` picks
    heads: ClassVar[tuple[str, ...]] = ("linear",)  # the trained heads that fit this kind
    error_criterion: ClassVar[str] = ""  # when a pixel counts as wrong, in a few words (figure titles)
    folder: ClassVar[str] = ""  # the ``folder`` dataset's subfolder of these targets (empty: the kind's name)
    extensions: ClassVar[tuple[str, ...]] = (".png",)  # target file types it accepts there (lower case)
    meta_keys: ClassVar[tuple[str, ...]] = ()  # the ``dataset.yaml`` keys :meth:`spec_from_meta` reads

    def __repr__(self) -> str:
        return f"<target kind {self.name!r}: {type(self).__module__}.{type(self).__qualname__}>"

    @property
    def higher_is_better(self) -> bool:
        """Direction of the main metric."""
        return self.metrics[self.main_metric]

    def check(self, spec: TargetSpec) -> None:  # noqa: B027  (an optional hook: most kinds take every spec)
        """Raise :class:`ProbebenchError` for a spec this kind cannot serve (default: every spec is fine)."""

    # -- closed-form probes
    @abstractmethod
    def num_outputs(self, spec: TargetSpec) -> int:
        """Columns a closed-form probe regresses (the last axis of :meth:`soft_targets`)."""

    @abstractmethod
    def soft_targets(
        self, targets: np.ndarray, spec: TargetSpec, hw: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Targets (B, H, W) → soft targets (B, h, w, K) float64 and cell weights (B, h, w) at feature
        resolution ``hw`` (a cell of weight 0 does not count)."""

    def class_frequencies(self, targets: Iterable[np.ndarray], spec: TargetSpec) -> np.ndarray | None:
        """Pixel count of each class over ``targets`` (an iterable of (H, W) maps); ``None`` (default) for a
        kind without classes, which then has no class weights (``targets`` is not consumed)."""
        return None

    def class_weights(self, targets: Iterable[np.ndarray], spec: TargetSpec) -> np.ndarray | None:
        """Inverse-frequency class weights (:func:`inverse_frequency_weights`), ``None`` without classes."""
        counts = self.class_frequencies(targets, spec)
        return None if counts is None else inverse_frequency_weights(counts)

    def balance_weights(self, y: np.ndarray, w: np.ndarray, class_weights: np.ndarray | None) -> np.ndarray:
        """Cell weights ``w`` times class-balancing weights of the soft targets ``y`` (soft: Σ_c y_c · w_c)."""
        if class_weights is None:
            return w
        return w * (y @ class_weights)

    @abstractmethod
    def decode(self, pred_up: torch.Tensor, spec: TargetSpec) -> torch.Tensor:
        """Regressed soft targets upsampled to label size (B, K, H, W) → what the metric scores."""

    @abstractmethod
    def make_metric(self, spec: TargetSpec, **options: Any) -> Any:
        """A fresh accumulator with ``update(pred, target)`` and ``compute() -> dict`` of :attr:`metrics`;
        ``options`` are the dataset's evaluation options for this kind."""

    def lambda_criterion(self, spec: TargetSpec, **options: Any) -> LambdaCriterion:
        """The score that picks λ on the validation split (default: the main metric)."""
        return MetricCriterion(self.make_metric(spec, **options), self.main_metric, self.higher_is_better)

    # -- trained probes
    objective_class: ClassVar[type[Objective] | None] = None  # what :meth:`objective` builds (None: none)

    def objective(
        self,
        spec: TargetSpec,
        options: Mapping[str, Any] | None = None,
        class_weights: np.ndarray | None = None,
    ) -> Objective:
        """The trained probes' :class:`Objective` for ``spec`` (default: :attr:`objective_class`); ``options``:
        the probe's training settings."""
        if self.objective_class is None:
            raise ProbebenchError(
                f"The {self.name!r} target kind defines no objective: trained probes cannot fit it."
            )
        return self.objective_class(spec, class_weights, options)

    # -- zero-shot reading of concept maps (optional)
    def from_concepts(
        self, probs: np.ndarray, words: Sequence[str], background: Sequence[str], spec: TargetSpec
    ) -> np.ndarray | None:
        """Concept probabilities ``probs`` (B, h, w, C) over ``words`` (softmax over concepts) → this kind's
        outputs (B, h, w, K), which :meth:`decode` turns into predictions with no training; ``background``: the
        words that stand for no object. ``None`` (default): concept maps do not answer this kind."""
        return None

    # -- analysis
    def error_mask(
        self, pred: np.ndarray, target: np.ndarray, **options: Any
    ) -> tuple[np.ndarray, np.ndarray]:
        """(wrong, valid) boolean maps of saved predictions and targets of one shape, for error overlap;
        ``options`` are the analysis' thresholds by name (a kind reads the ones it knows)."""
        raise ProbebenchError(f"The {self.name!r} target kind defines no error mask.")

    def panels(self, target: np.ndarray, pred: np.ndarray, meta: Mapping[str, Any]) -> Panels:
        """How a prediction figure draws ``target`` and ``pred`` (n, H, W); ``meta`` is the saved head's JSON
        (label space, cell). Default: :func:`continuous_panels`."""
        return continuous_panels(target, pred)

    # -- reading from disk
    def read_target(self, path: Path, spec: TargetSpec) -> np.ndarray:
        """The target stored in the file at ``path``, as the dataset returns it (before a dataset's own mapping
        of stored values, then :meth:`check_target`). Default: the image's values as stored (``np.asarray`` of
        the decoded image)."""
        return np.asarray(open_image(path))

    def as_target(self, pred: np.ndarray, spec: TargetSpec) -> np.ndarray:
        """A decoded prediction (what :meth:`decode` gives, as numpy) as a target of this kind — what a generated
        dataset stores as its label. Default: unchanged."""
        return pred

    def write_target(self, path: Path, target: np.ndarray, spec: TargetSpec) -> None:
        """Store ``target`` (as :meth:`read_target` returns it) at ``path`` so that :meth:`read_target` gives it
        back: what a generated or exported ``folder`` dataset writes. Default: the values as an 8-bit image."""
        save_png(np.asarray(target).astype(np.uint8), path)

    def meta_from_spec(self, spec: TargetSpec) -> dict[str, Any]:
        """The ``dataset.yaml`` keys that describe ``spec`` (the inverse of :meth:`spec_from_meta`; default none)."""
        return {}

    def check_target(  # noqa: B027  (an optional hook: most kinds take every value)
        self,
        target: np.ndarray,
        spec: TargetSpec,
        where: Path | str,
        *,
        stored: np.ndarray | None = None,
        note: str = "",
    ) -> None:
        """Raise :class:`ProbebenchError` naming ``where`` for values a target of this kind cannot hold
        (default: none). ``stored``: the file's values before the dataset mapped them (quoted in the message),
        ``note``: how the dataset maps them."""

    def spec_from_meta(self, meta: Mapping[str, Any], where: Path | str) -> TargetSpec:
        """The :class:`~tasks.base.TargetSpec` a ``dataset.yaml`` mapping (``meta``, read from ``where``)
        describes, from its :attr:`meta_keys`; a ProbebenchError naming ``where`` for bad values. Default: the
        kind alone."""
        from tasks.base import TargetSpec

        return TargetSpec(self.name)
