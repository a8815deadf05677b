"""The probe registry."""

from probebench.core.registry import Registry

PROBES = Registry("probe", group="probebench.probes")
PROBES.register(
    "ridge",
    "probes.screen:ridge_screen",
    kind="closed form",
    source="fitted on cached features",
    notes="one pass per (layer, t); every λ from one eigendecomposition; λ picked on val",
)
PROBES.register(
    "linear",
    "probes.linear:linear_probe",
    kind="trained",
    source="fitted on cached features",
    notes="BN + dropout + 1×1 conv per (layer, t) or concat_keys (DINOv2/v3 protocol); early stopping on val",
)
PROBES.register(
    "fusion",
    "probes.fusion:fusion_probe",
    kind="trained",
    source="fitted on cached features",
    notes="MMDiff timestep fusion: mode spatial|global|mean|concat|single; weight maps saved as artifacts",
)
PROBES.register(
    "head",
    "probes.heads:head_probe",
    kind="trained",
    source="fitted on cached features",
    notes="DeepLabV3+-lite (segmentation, saliency) / DPT-lite (depth); width 32 (CPU) to 256 (~36 M params)",
)
PROBES.register(
    "combine",
    "probes.linear:combine_probe",
    kind="trained",
    source="two backbones' caches",
    notes="main key + extra backbone's keys resampled to one grid; joint vs each alone (complementarity)",
)
PROBES.register(
    "ridge-stream",
    "probes.stream:stream_ridge_screen",
    kind="closed form, no cache",
    source="fitted during extraction",
    notes="the ridge screen without storing features (grids too large for the disk); same numbers",
)
