"""The probe registry: each name points at a :class:`probes.base.Probe` subclass (lazily, so listing the probes
imports no torch). ``kind``, ``source`` and ``notes`` are what ``probebench list probes`` shows; what a probe can
do is read from its class (:func:`probe_class`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from probebench.core.errors import ProbebenchError
from probebench.core.registry import Registry

if TYPE_CHECKING:
    from probes.base import Probe

PROBES = Registry("probe", group="probebench.probes")
PROBES.register(
    "ridge",
    "probes.screen:RidgeProbe",
    kind="closed form",
    source="fitted on cached features",
    notes="one pass per (layer, t); every λ from one eigendecomposition; λ picked on val",
)
PROBES.register(
    "linear",
    "probes.linear:LinearProbe",
    kind="trained",
    source="fitted on cached features",
    notes="BN + dropout + 1×1 conv per (layer, t) or concat_keys (DINOv2/v3 protocol); early stopping on val",
)
PROBES.register(
    "fusion",
    "probes.fusion:FusionProbe",
    kind="trained",
    source="fitted on cached features",
    notes="MMDiff timestep fusion: mode spatial|global|mean|concat|single; weight maps saved as artifacts",
)
PROBES.register(
    "head",
    "probes.heads:HeadProbe",
    kind="trained",
    source="fitted on cached features",
    notes="DeepLabV3+-lite (segmentation, saliency) / DPT-lite (depth); width 32 (CPU) to 256 (~36 M params)",
)
PROBES.register(
    "combine",
    "probes.linear:CombineProbe",
    kind="trained",
    source="two backbones' caches",
    notes="main key + extra backbone's keys resampled to one grid; joint vs each alone (complementarity)",
)
PROBES.register(
    "ridge-stream",
    "probes.stream:RidgeStreamProbe",
    kind="closed form, no cache",
    source="fitted during extraction",
    notes="the ridge screen without storing features (grids too large for the disk); same numbers",
)
PROBES.register(
    "concept",
    "probes.concept:ConceptProbe",
    kind="zero-shot",
    source="concept-map caches (backbone concepts: [...])",
    notes="ConceptAttention: argmax over concept words → segmentation, object vs background → saliency; no training",
)


def probe_class(name: str) -> type[Probe]:
    """The :class:`~probes.base.Probe` subclass registered as ``name`` (unknown names: an error with the closest
    ones)."""
    from probes.base import Probe

    obj = PROBES.get(name)
    if not (isinstance(obj, type) and issubclass(obj, Probe)):
        raise ProbebenchError(
            f"Probe {name!r} is registered as {obj!r}, which is not a probes.base.Probe subclass: subclass it "
            "(a Params dataclass and fit), as the README's 'Adding a probe' shows."
        )
    return obj
