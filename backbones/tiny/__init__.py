"""The tiny MM-DiT trained by probebench itself on ``scenes`` (see ``backbones/tiny/README.md``)."""
