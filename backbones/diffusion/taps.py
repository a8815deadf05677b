"""Taps: forward hooks that capture the image tokens of chosen transformer blocks, with early exit.

The hook on the deepest requested block stores its output and ends the forward, so deeper blocks never run
(reading layer 3 of a 57-block FLUX costs four blocks, not 57). Block outputs differ across families and
diffusers versions — ``(text, image)`` tuples, ``(None, image)``, one concatenated ``[text, image]`` tensor —
so :func:`image_tokens` inspects the output type at run time and keeps only the image stream.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from probebench.core.errors import ProbebenchError


class _EarlyExit(Exception):
    """Raised by the hook on the deepest requested block to end the forward (never escapes this module)."""


def image_tokens(output: Any, num_image_tokens: int) -> torch.Tensor:
    """The image tokens (N, L_img, C) of a block output.

    Tuples/lists follow diffusers' ``(text, image)`` order — the last tensor element is the image stream (the
    last SD3 block returns ``(None, image)``). A single tensor longer than ``num_image_tokens`` is a
    concatenated ``[text, image]`` sequence (FLUX single-stream blocks in older diffusers): keep the tail.
    """
    if isinstance(output, (tuple, list)):
        tensors = [o for o in output if isinstance(o, torch.Tensor)]
        if not tensors:
            raise ProbebenchError("A transformer block returned no tensor; cannot read its image tokens.")
        output = tensors[-1]
    if not isinstance(output, torch.Tensor) or output.ndim != 3:
        raise ProbebenchError(
            f"Unexpected block output {type(output).__name__}; expected (batch, tokens, channels)."
        )
    n = output.shape[1]
    if n == num_image_tokens:
        return output
    if n > num_image_tokens:
        return output[:, n - num_image_tokens :]
    raise ProbebenchError(f"A block returned {n} tokens, fewer than the {num_image_tokens} image tokens.")


def tokens_to_map(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(N, h·w, C) row-major tokens → (N, C, h, w)."""
    n, length, c = tokens.shape
    if length != h * w:
        raise ProbebenchError(f"{length} image tokens do not form a {h}x{w} grid.")
    return tokens.reshape(n, h, w, c).permute(0, 3, 1, 2)


def run_blocks_with_taps(
    forward: Callable[[], Any],
    blocks: Sequence[nn.Module],
    layers: Sequence[int],
    select: Callable[[Any], torch.Tensor],
) -> dict[int, torch.Tensor]:
    """Run ``forward()`` with hooks on ``blocks[layers]``; return ``select(block output)`` per layer.

    The hook on the deepest requested block raises :class:`_EarlyExit` after storing its output, so no later
    block runs. Hooks are removed even when the forward fails.
    """
    layers = sorted(set(int(i) for i in layers))
    deepest = layers[-1]
    captured: dict[int, torch.Tensor] = {}
    handles = []

    def make_hook(idx: int):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            captured[idx] = select(output)
            if idx == deepest:
                raise _EarlyExit

        return hook

    try:
        for idx in layers:
            handles.append(blocks[idx].register_forward_hook(make_hook(idx)))
        with contextlib.suppress(_EarlyExit):
            forward()
    finally:
        for h in handles:
            h.remove()
    missing = [i for i in layers if i not in captured]
    if missing:  # pragma: no cover - a model whose forward skips blocks
        raise ProbebenchError(f"Blocks {missing} did not run during the forward pass.")
    return captured
