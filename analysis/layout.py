"""Keeping a figure's text on its canvas.

Constrained layout places every axes' decorations (titles, labels, tick labels, colour bars, axes legends)
but it neither wraps a suptitle nor narrows a figure-level legend, and it never grows the figure: on a
one-panel figure (a one-task run) a long suptitle or a legend wider than the panel runs off the canvas and
is clipped in the saved file. :func:`fit_texts` fixes a finished figure in place — titles wrapped to the
width they have, figure legends given fewer columns, and as a last resort a larger canvas — and
:func:`clipped_texts` names whatever still lies outside (the tests call it on every figure kind).
"""

from __future__ import annotations

import textwrap

import matplotlib.pyplot as plt
from matplotlib.backend_bases import RendererBase
from matplotlib.font_manager import FontProperties
from matplotlib.legend import Legend
from matplotlib.text import Text
from matplotlib.transforms import Bbox

TOLERANCE_PX = 1.0  # rounding of the renderer's extents


def _renderer(fig: plt.Figure) -> RendererBase:
    """Lay the figure out (constrained layout included) without rasterising it, and return its renderer."""
    fig.draw_without_rendering()
    return fig.canvas.get_renderer()


def _not_drawn(fig: plt.Figure) -> set[int]:
    """Ids of texts matplotlib keeps but does not draw: tick labels of ticks outside the view limits, and the
    texts of hidden axes and hidden legends."""
    out: set[int] = set()
    for ax in fig.axes:
        if not ax.get_visible():
            out |= {id(t) for t in ax.findobj(Text)}
            continue
        for axis in (ax.xaxis, ax.yaxis):
            lo, hi = sorted(axis.get_view_interval())
            eps = 1e-9 * max(hi - lo, 1e-300)
            for tick in [*axis.get_major_ticks(), *axis.get_minor_ticks()]:
                loc = tick.get_loc()
                if loc is None or not (lo - eps <= loc <= hi + eps):
                    out |= {id(tick.label1), id(tick.label2)}
    for leg in [*fig.legends, *(ax.get_legend() for ax in fig.axes)]:
        if isinstance(leg, Legend) and not leg.get_visible():
            out |= {id(t) for t in leg.findobj(Text)}
    return out


def visible_texts(fig: plt.Figure) -> list[Text]:
    """Every text the figure draws: suptitle, titles, axis labels, tick labels in view, legend entries and
    titles, colour-bar labels, annotations."""
    skip = _not_drawn(fig)
    out: list[Text] = []
    for t in fig.findobj(Text):
        if id(t) in skip or not (t.get_visible() and t.get_text().strip()):
            continue
        skip.add(id(t))  # findobj may reach a text twice
        out.append(t)
    return out


def clipped_texts(fig: plt.Figure, tol: float = TOLERANCE_PX) -> list[str]:
    """The drawn texts whose extent is not inside the canvas after layout, as ``'text' (x0, y0, x1, y1)``
    strings in pixels; empty when nothing is clipped."""
    r = _renderer(fig)
    canvas = fig.bbox
    bad = []
    for t in visible_texts(fig):
        b = t.get_window_extent(r)
        if (
            b.x0 < canvas.x0 - tol
            or b.y0 < canvas.y0 - tol
            or b.x1 > canvas.x1 + tol
            or b.y1 > canvas.y1 + tol
        ):
            bad.append(f"{t.get_text()!r} ({b.x0:.0f}, {b.y0:.0f}, {b.x1:.0f}, {b.y1:.0f})")
    return bad


def _wrap(t: Text, width_px: float, r: RendererBase) -> bool:
    """Re-wrap the lines of ``t`` wider than ``width_px`` at word boundaries (its own line breaks kept, each
    attempt from the original text, so no line is left with a stray word); whether it changed."""
    w = t.get_window_extent(r).width
    if w <= width_px:
        return False
    lines = t.get_text().split("\n")
    chars = max(len(line) for line in lines)
    for _ in range(6):
        chars = max(12, int(chars * min(width_px / w, 0.97)))
        t.set_text(
            "\n".join(
                textwrap.fill(line, chars, break_long_words=False, break_on_hyphens=False)
                if len(line) > chars
                else line
                for line in lines
            )
        )
        w = t.get_window_extent(r).width
        if w <= width_px or chars == 12:
            break
    return True


def _union(boxes: list[Bbox]) -> Bbox | None:
    return Bbox.union(boxes) if boxes else None


def legend_ncol(fig: plt.Figure, labels: list[str], fontsize: float = 8.0, max_ncol: int = 6) -> int:
    """How many columns a figure-level legend of ``labels`` can have and still fit the figure's width (each
    column as wide as the widest label plus its handle); at least 1. Call it before ``fig.legend``: the
    columns of an existing legend cannot be changed."""
    if not labels:
        return 1
    r = fig.canvas.get_renderer()
    prop = FontProperties(size=fontsize)
    widest = max(r.get_text_width_height_descent(str(lab), prop, ismath=False)[0] for lab in labels)
    px_per_pt = fig.dpi / 72.0
    column = widest + (2.0 + 0.8 + 2.0) * fontsize * px_per_pt  # handle, its gap, column spacing (in em)
    fit = int((0.95 * fig.bbox.width - 2 * fontsize * px_per_pt) // column)
    return max(1, min(max_ncol, len(labels), fit))


def _overflow(fig: plt.Figure, r: RendererBase) -> tuple[float, float]:
    """Pixels by which the drawn texts overflow the canvas, horizontally and vertically (both sides summed)."""
    box = _union([t.get_window_extent(r) for t in visible_texts(fig)])
    if box is None:
        return 0.0, 0.0
    c = fig.bbox
    dx = max(0.0, c.x0 - box.x0) + max(0.0, box.x1 - c.x1)
    dy = max(0.0, c.y0 - box.y0) + max(0.0, box.y1 - c.y1)
    return dx, dy


def fit_texts(fig: plt.Figure, grow: bool = True) -> plt.Figure:
    """Make every text of ``fig`` fit its canvas: wrap the suptitle to the figure's width and each axes title
    to its axes' width (at least 30 % of the figure), then (``grow``) enlarge the canvas by whatever still
    overflows (a figure legend too wide, a long tick label). Returns ``fig``; texts change only by line
    breaks. One layout pass when nothing needs fixing."""
    r = _renderer(fig)
    width = fig.bbox.width
    titles = []
    if fig._suptitle is not None:  # matplotlib has no public getter for the suptitle Text
        titles.append((fig._suptitle, 0.97 * width))
    for ax in fig.axes:
        if ax.get_visible():
            room = max(ax.get_position().width * width, 0.3 * width)
            titles += [(t, room) for t in (ax.title, ax._left_title, ax._right_title) if t.get_text()]
    wrapped = [_wrap(t, room, r) for t, room in titles]
    if any(wrapped):
        r = _renderer(fig)
    if not grow:
        return fig
    for _ in range(3):
        dx, dy = _overflow(fig, r)
        if dx <= TOLERANCE_PX and dy <= TOLERANCE_PX:
            break
        w, h = fig.get_size_inches()
        pad = 6.0  # pixels of margin on a grown side
        fig.set_size_inches(w + (dx + pad * (dx > 0)) / fig.dpi, h + (dy + pad * (dy > 0)) / fig.dpi)
        r = _renderer(fig)
    return fig
