"""probebench: feature-probing benchmarks for frozen vision backbones (diffusion transformers, DINOv3, timm).

Stages live in the top-level packages ``tasks``, ``backbones``, ``probes`` and ``analysis``; this package holds
the command line, the configs and the leaf utilities they share (``errors``, ``registry``, ``io``).
"""

__version__ = "0.1.0"
