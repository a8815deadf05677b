"""The random twin of a diffusion transformer: ONE standard init for every family (``weights="random"``).

A random-weight control must keep the architecture's computation and drop only what training learned. The
*training* init of DiT-style models does not do that: adaLN-Zero sets every block's modulations (shift, scale,
gate) and the output projection to zero, so each block is the identity at step 0 — features of every layer are
then byte-identical and "trained beats random" compares the model with its patch embedding.

The standard used here (tag :data:`RANDOM_INIT`) is **PyTorch's default layer init, which is what diffusers'
constructors give**: after the transformer is built from its config, :func:`standard_random_init` runs
``reset_parameters()`` of every ``torch.nn`` layer again, in module order, under ``torch.manual_seed(seed)``:
Linear and Conv weights kaiming-uniform(a=√5) = U(±1/√fan_in), their biases U(±1/√fan_in), Embedding N(0, 1),
LayerNorm/GroupNorm/RMSNorm weight 1 and bias 0. Parameters that belong to no ``torch.nn`` layer (PixArt's and
Sana's ``scale_shift_table``, randn/√d) keep the constructor's draw under the same seed. Where every
parameter belongs to a ``torch.nn`` layer (DiT, SD3, FLUX, tiny-mmdit) the resets draw in the constructor's
order, so the weights equal ``torch.manual_seed(seed); cls(**config)`` bit for bit (tests/test_random_init.py).

Why this standard and not another:

* it is diffusers' own — ``cls(**config)`` for DiT, PixArt, SD3, FLUX and Sana (diffusers 0.42 zero-initialises
  nothing in these classes; some other diffusers transformers do, e.g. ERNIE-Image's adaLN-Zero), so every family's
  twin follows one rule that anyone can rebuild; re-running the layer resets makes the result independent of the
  code path that built the module (tiny-mmdit's ``backbones.tiny.model.build`` applies the adaLN-Zero training
  init, which this overwrites; the training code keeps it);
* no adaLN modulation, gate or output projection is zero, so no block is the identity: on tiny-mmdit's twin
  (4 images of 64 px, σ ∈ {0.1, 0.5, 0.9}) consecutive layers' feature maps differ by 2.4–3.8 % (relative L2),
  against 28–144 % for the trained model and exactly 0 under the adaLN-Zero training init;
* ViT/DiT's N(0, 0.02) with zero biases is nearly the identity again at these widths: the adaLN gates come out
  of the timestep embedding through three 0.02-std linears, and consecutive layers of tiny-mmdit then differ by
  only ~0.07 %.

The init is a pure function of (architecture, seed) on the CPU — the modules are built on the CPU and moved to
the device afterwards — so it is identical on every machine with the same torch/diffusers versions. The tag is
part of every random ``weights_id``, so caches of an older random init are never reused.
"""

from __future__ import annotations

import torch
from torch import nn

RANDOM_INIT = "torch-default-v1"
"""Version tag of the random init, recorded in ``weights_id`` (and so in every feature-cache hash)."""


def is_torch_layer(module: nn.Module) -> bool:
    """Whether ``module`` is one of PyTorch's own layers (whose ``reset_parameters`` is the default init)."""
    return type(module).__module__.startswith("torch.nn.") and callable(
        getattr(module, "reset_parameters", None)
    )


def standard_random_init(module: nn.Module, seed: int) -> nn.Module:
    """Re-draw every ``torch.nn`` layer of ``module`` with PyTorch's default init, seeded (in place; returned).

    Layers are reset in ``named_modules()`` order under ``torch.manual_seed(seed)``; the global RNG state is
    restored afterwards. The module must be on the CPU (its draws then do not depend on the device).
    """
    devices = {p.device.type for p in module.parameters()}
    if devices - {"cpu"}:
        raise ValueError(
            f"standard_random_init needs a module on the CPU, got parameters on {sorted(devices)}."
        )
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(int(seed))
        for layer in module.modules():
            if is_torch_layer(layer):
                layer.reset_parameters()
    return module


def random_weights_note(seed: int, vae: str) -> str:
    """The one-sentence description of a random diffusion twin (``Adapter.weights_note``)."""
    return (
        f"random: transformer from diffusers' default init (PyTorch's layer defaults, every layer re-drawn; no "
        f"zero adaLN gate, modulation or output projection; {RANDOM_INIT}), seed {seed}; VAE: {vae}"
    )
