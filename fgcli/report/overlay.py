"""Rows of image panels with translucent heat-map overlays, drawn with matplotlib's Agg canvas (no torch).

Only ``matplotlib.figure.Figure`` is used, never pyplot, so drawing does not touch the global backend of a
notebook or GUI that imported fgcli.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fgcli.utils import atomic_path, optional_import

#: perceptually uniform and readable over photos; low values dark, high values bright yellow
COLORMAP = "inferno"
#: overlay opacity at heat 0 and heat 1: low-attention areas stay visible, high ones glow
HEAT_ALPHA = (0.3, 0.7)
PANEL_INCHES = 2.1
#: heights of one line of caption / panel title, and of the note plus paddings, in inches
CAPTION_LINE_INCHES, TITLE_LINE_INCHES, ROW_MARGIN_INCHES = 0.18, 0.16, 0.4
DPI = 120
#: characters of 9-pt text that fit across one inch, for wrapping captions inside their row
CHARS_PER_INCH = 13
CAPTION_COLORS = {None: "black", True: "darkgreen", False: "firebrick"}


@dataclass
class Panel:
    """One square image: ``image`` (H, W, 3) in [0, 1]; ``heat`` (H, W) in [0, 1] drawn over it, if any."""

    title: str
    image: np.ndarray
    heat: np.ndarray | None = None
    note: str = ""


@dataclass
class Row:
    """Panels side by side under one caption; ``correct`` colours the caption (None: the true class is unknown)."""

    caption: str
    panels: list[Panel] = field(default_factory=list)
    correct: bool | None = None


def save_rows(rows: list[Row], out_path: str | Path) -> Path:
    """Draw ``rows`` top to bottom (every panel the same size) and write a PNG atomically.

    Captions and titles are wrapped first, so each row gets the height its text needs and no panel shrinks.
    """
    figure_module = optional_import("matplotlib.figure", "report", "Drawing attention maps")
    columns = max(len(row.panels) for row in rows)
    width = max(columns, 2) * PANEL_INCHES
    captions = [_wrap(row.caption, width) for row in rows]
    titles = [[_wrap(panel.title, PANEL_INCHES) for panel in row.panels] for row in rows]
    heights = [
        PANEL_INCHES + ROW_MARGIN_INCHES + CAPTION_LINE_INCHES * _lines(caption)
        + TITLE_LINE_INCHES * max(map(_lines, row_titles))
        for caption, row_titles in zip(captions, titles)
    ]
    figure = figure_module.Figure(figsize=(width, sum(heights)), dpi=DPI, layout="constrained")
    subfigures = figure.subfigures(len(rows), 1, squeeze=False, height_ratios=heights)[:, 0]
    for subfigure, row, caption, row_titles in zip(subfigures, rows, captions, titles):
        subfigure.suptitle(caption, fontsize=9.5, color=CAPTION_COLORS[row.correct], ha="left", x=0.01)
        axes = subfigure.subplots(1, columns, squeeze=False)[0]
        for ax, panel, title in zip(axes, row.panels, row_titles):
            _draw_panel(ax, panel, title)
        for ax in axes[len(row.panels):]:
            ax.set_visible(False)
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        figure.savefig(tmp, format="png", dpi=DPI, facecolor="white")
    return out_path


def _lines(text: str) -> int:
    return text.count("\n") + 1


def _draw_panel(ax, panel: Panel, title: str) -> None:
    ax.imshow(np.clip(panel.image, 0.0, 1.0), interpolation="antialiased")
    if panel.heat is not None:
        ax.imshow(_heat_rgba(panel.heat), interpolation="bilinear")
    ax.set_title(title, fontsize=9, pad=3)
    ax.set_xlabel(panel.note, fontsize=8, labelpad=2, color="dimgray")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def _heat_rgba(heat: np.ndarray) -> np.ndarray:
    """Colour-mapped heat whose opacity rises with the value (matplotlib's scalar ``alpha`` cannot vary)."""
    colormaps = optional_import("matplotlib", "report", "Drawing attention maps").colormaps
    heat = np.clip(heat, 0.0, 1.0)
    rgba = colormaps[COLORMAP](heat)
    rgba[..., 3] = HEAT_ALPHA[0] + (HEAT_ALPHA[1] - HEAT_ALPHA[0]) * heat
    return rgba


class _NameWrapper(textwrap.TextWrapper):
    """Breaks at plain spaces and after ``_ . -`` before a letter, so ``001.Black_footed_Albatross`` wraps between
    its words while numbers like ``13.8%`` and no-break spaces (U+00A0, which ``\\s`` would match) stay whole."""

    wordsep_re = re.compile(r"( +|(?<=[_.\-])(?=[A-Za-z]))")


def _wrap(text: str, width_inches: float) -> str:
    """Wrap each line to the width it is drawn in, so long class names never run past their panel or row."""
    wrapper = _NameWrapper(width=int(width_inches * CHARS_PER_INCH))
    return "\n".join(wrapper.fill(line) for line in text.splitlines())
