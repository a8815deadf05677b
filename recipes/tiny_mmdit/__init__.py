"""Training, sweeping and scoring the tiny MM-DiT that ``backbones.create("tiny-mmdit")`` loads (see ``README.md``).

    python -m recipes.tiny_mmdit.autoencoder --help   # the autoencoder
    python -m recipes.tiny_mmdit.train --help         # the DiT on its latents
    python -m recipes.tiny_mmdit.sweep --help         # recipe variants side by side (GPU)
    python -m recipes.tiny_mmdit.evaluate --help      # FD / KID / class accuracy of samples

The architecture and the weight-file format live in the installed ``backbones.tiny.model``; the shipped weights
in ``backbones/tiny/weights/`` (every command's default ``--out`` / ``--weights``).
"""
