"""Finding and loading weights safely: local files, the Hugging Face cache, and offline mode.

Nothing here unpickles: ``.safetensors`` through safetensors, ``.pth``/``.bin`` through
``torch.load(weights_only=True)``. With ``HF_HUB_OFFLINE=1`` a missing file fails at once, naming where we
looked, instead of hanging on the network.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from probebench.core.errors import ProbebenchError, WeightsNotFoundError


def hf_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in {"1", "true", "yes", "on"}


def hf_cache_dir() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except Exception:  # pragma: no cover - very old huggingface_hub
        return os.path.expanduser("~/.cache/huggingface/hub")


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a state dict from ``.safetensors`` or a ``torch.save`` file, never executing pickled code."""
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"Weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ProbebenchError(f"Could not load weights from {path} safely (weights_only=True): {e}") from e
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ProbebenchError(f"{path} does not hold a state dict (got {type(sd).__name__}).")
    return sd


def is_gated_error(error: BaseException) -> bool:
    """Whether a Hugging Face Hub error says the repo is gated (its license must be accepted, with a token)."""
    from huggingface_hub.errors import GatedRepoError

    return any(isinstance(e, GatedRepoError) for e in (error, error.__cause__, error.__context__))


def gated_message(repo_id: str) -> str:
    return (
        f"{repo_id!r} is a gated repository: accept its license on https://huggingface.co/{repo_id} and log in "
        "(`huggingface-cli login`, or set HF_TOKEN) where the network is reachable — or copy a downloaded "
        "snapshot to this machine and pass weights=<that folder> (it loads offline), or weights='random'."
    )


def find_hf_file(repo_id: str, filenames: tuple[str, ...], revision: str | None = None) -> Path:
    """A file of ``repo_id`` from the local HF cache, downloading only when not offline.

    Raises :class:`WeightsNotFoundError` naming the repo, the files and the cache directory.
    """
    from huggingface_hub import try_to_load_from_cache

    for fn in filenames:
        hit = try_to_load_from_cache(repo_id, fn, revision=revision)
        if isinstance(hit, str):
            return Path(hit)
    where = f"the Hugging Face cache {hf_cache_dir()} (repo {repo_id!r}, files {', '.join(filenames)})"
    if hf_offline():
        raise WeightsNotFoundError(
            f"Weights for {repo_id!r} are not on disk and HF_HUB_OFFLINE=1 forbids downloading. Looked in {where}. "
            "Pass weights=<path to a local file or folder>, or weights='random' for the untrained architecture."
        )
    from huggingface_hub import hf_hub_download

    errors = []
    for fn in filenames:
        try:
            return Path(hf_hub_download(repo_id, fn, revision=revision))
        except Exception as e:  # try the next file name
            if is_gated_error(e):
                raise WeightsNotFoundError(gated_message(repo_id)) from e
            errors.append(f"{fn}: {type(e).__name__}")
    raise WeightsNotFoundError(
        f"Could not find or download weights for {repo_id!r} ({'; '.join(errors)}); looked in {where}."
    )
