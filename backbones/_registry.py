"""The backbone registry (kept in its own module so family modules can import it without cycles)."""

from probebench.core.registry import Registry

BACKBONES = Registry(
    "backbone",
    group="probebench.backbones",
    lazy_modules=(
        "backbones.timm_backbones",
        "backbones.dit",
        "backbones.mmdit",
        "backbones.pixart",
        "backbones.sana",
        "backbones.dinov3",
        "backbones.tiny_mmdit",
    ),
)
