"""The tiny MM-DiT trained by probebench itself on ``scenes``: its architecture and shipped weights (the training
recipe and its measurements are in ``recipes/tiny_mmdit/``, not installed)."""
