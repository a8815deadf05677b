"""Errors meant for the user: the CLI prints them as one line (no traceback unless ``--debug``)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ProbebenchError(Exception):
    """Base class of errors caused by user input or missing resources, printed without a traceback."""


class UnknownNameError(ProbebenchError, ValueError, KeyError):
    """A name (backbone, task, probe, config key, layer...) that is not among the valid choices."""

    def __init__(self, kind: str, name: str, choices: Iterable[str], extra: str = ""):
        self.kind, self.name = kind, name
        self.choices = sorted(set(choices))
        super().__init__(unknown_message(kind, name, self.choices, extra))

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return self.args[0]


class WeightsNotFoundError(ProbebenchError, FileNotFoundError):
    """Weights that are not on disk (and may not be downloaded)."""


def did_you_mean(name: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """The closest valid names to ``name`` (case-insensitive), best first."""
    choices = list(choices)
    lowered = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.5)
    return [lowered[c] for c in close]


def closest_hint(name: str, choices: Iterable[str]) -> str:
    """`` Did you mean 'x'?`` for the closest valid name to ``name`` (with its leading space), or ``""``."""
    close = did_you_mean(str(name), choices, n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def unknown_message(
    kind: str, name: str, choices: Iterable[str], extra: str = "", max_listed: int = 40
) -> str:
    """ "Unknown backbone 'x'. Did you mean: a, b? Available: ..." in the manner of lm-eval."""
    choices = sorted(set(choices))
    msg = f"Unknown {kind} {name!r}."
    close = did_you_mean(name, choices)
    if close:
        msg += f" Did you mean: {', '.join(close)}?"
    listed = ", ".join(choices[:max_listed]) + (
        f", ... ({len(choices)} in all)" if len(choices) > max_listed else ""
    )
    msg += f" Available: {listed}." if choices else " None are available."
    if extra:
        msg += " " + extra
    return msg
