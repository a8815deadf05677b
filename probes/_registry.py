"""The probe registry."""

from probebench.registry import Registry

PROBES = Registry("probe", group="probebench.probes")
PROBES.register(
    "ridge",
    "probes.screen:ridge_screen",
    kind="closed form",
    source="fitted on cached features",
    notes="one pass per (layer, t); every λ from one eigendecomposition; λ picked on val",
)
