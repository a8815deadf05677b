"""How result rows name concept models, and the names the concept analysis shares (:mod:`analysis.concepts`,
:mod:`analysis.concept_maps`, :mod:`analysis.cues`).

A concept model's ``backbone`` label is ``<name>[concepts=<words>(;score=cross-attention)(;output=pair;background=
<words>)]`` (written by :func:`probebench.pipeline.backbone_label`); :func:`parse_concept_label` is the only reader.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pandas as pd

from analysis.common import with_model
from probebench.core.errors import ProbebenchError

CONCEPT_PROBE = "concept"  # zero-shot score of one (layer, timestep) cell's maps
CONCEPT_MEAN_PROBE = "concept-mean"  # the maps averaged over every cell the probe read
CEILING_PROBE = "ridge"  # the supervised probe of the base backbone: the ceiling at the same cell
BASELINE_SCORE = "cross-attention"  # ConceptAttention's baseline, ``score=cross-attention`` in the label
MAPS_STEM = "concept_maps"  # heads/<model>/concept_maps.npy and .json


# -- the labels -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ConceptLabel:
    """What a concept model's ``backbone`` label says: its base backbone, its words, and its options."""

    base: str  # the backbone the maps are read from: "tiny-mmdit"
    words: tuple[str, ...]  # the concepts, in channel order
    score: str = ""  # "" for ConceptAttention's own score, "cross-attention" for its baseline
    options: tuple[tuple[str, str], ...] = ()  # every other option in label order, e.g. (("output", "pair"),)

    @property
    def is_baseline(self) -> bool:
        return self.score == BASELINE_SCORE

    @property
    def match_key(self) -> tuple[Any, ...]:
        """Everything but the score: a method model and its baseline share it."""
        return self.base, self.words, tuple(sorted(self.options))

    @property
    def variant(self) -> str:
        """The options other than the words and the score, ``output=pair; background=sky`` (``""`` for none)."""
        return "; ".join(f"{k}={v}" for k, v in self.options)

    @property
    def kind(self) -> str:
        """How the maps were scored, for titles: ConceptAttention, its cross-attention baseline, or another."""
        if self.is_baseline:
            return "cross-attention baseline"
        return "ConceptAttention" if not self.score else f"score={self.score}"


_LABEL = re.compile(r"^(?P<base>[^\[\]]+)\[(?P<options>[^\[\]]*)\]$")
_LABEL_FORMAT = "<name>[concepts=<words>(;score=cross-attention)(;output=pair;background=<words>)]"


def parse_concept_label(backbone: str) -> ConceptLabel | None:
    """Take apart a concept model's ``backbone`` label, or return None when it is not one.

    A label is a concept label when it contains ``[concepts=``. Its form is ``<name>[concepts=<w1 w2 …>;<key>=<value>;…]``.
    The words are separated by spaces. The options are separated by ``;``. ``score`` says how the maps were scored
    and is empty for ConceptAttention's own score. Every other option (``output``, ``background``, …) is kept
    verbatim in label order. This is the only place that reads the labels. A label that contains ``[concepts=``
    but does not have this form raises :class:`ProbebenchError` naming the expected form."""
    if "[concepts=" not in backbone:
        return None
    m = _LABEL.match(backbone.strip())

    def bad(why: str) -> ProbebenchError:
        return ProbebenchError(f"Concept label {backbone!r}: {why}; expected {_LABEL_FORMAT}.")

    if m is None or not m["options"].startswith("concepts="):
        raise bad("not of the form name[concepts=…;…]")
    options: dict[str, str] = {}
    for item in m["options"].split(";"):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise bad(f"option {item!r} is not key=value")
        if key in options:
            raise bad(f"option {key!r} appears twice")
        options[key] = value.strip()
    words = tuple(options.pop("concepts").split())
    if not words:
        raise bad("no concept words")
    score = options.pop("score", "")
    return ConceptLabel(m["base"].strip(), words, score, tuple(options.items()))


def _labels(df: pd.DataFrame) -> dict[str, ConceptLabel]:
    """``{backbone: label}`` of the concept models in ``df``."""
    out = {}
    for b in df["backbone"].dropna().unique():
        lab = parse_concept_label(str(b))
        if lab is not None:
            out[str(b)] = lab
    return out


def concept_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of concept models (any probe), with a ``model`` column."""
    df = with_model(df)
    return df[df["backbone"].astype(str).isin(_labels(df))]
