"""One fixed colour per axis, used identically by every tab and plot, and the page's CSS.

The HHH axes keep their own colours; a checkpoint's own axes (`MoCaEConfig.axes`) take the colours of a
fixed colour-blind-safe palette in the order of its axes (`axis_colors`), so a model's colours are the same
on every tab, in every download and on every visit."""

from __future__ import annotations

from collections.abc import Iterable

from alignx_demo.config import AXES

AXIS_COLORS: dict[str, str] = {"helpful": "#2563eb", "harmless": "#16a34a", "honest": "#d97706"}
assert tuple(AXIS_COLORS) == AXES
PALETTE = ("#cc79a7", "#0072b2", "#d55e00", "#009e73", "#e69f00", "#56b4e9")
"""Okabe and Ito's colour-blind-safe colours (yellow left out: too light on white), for axes other than the HHH ones."""


class _Labels(dict):
    """Axis names as the page writes them: the HHH ones as before, any other capitalised."""

    def __missing__(self, axis: str) -> str:
        return axis[:1].upper() + axis[1:]


AXIS_LABELS: dict[str, str] = _Labels(helpful="Helpful", harmless="Harmless", honest="Honest")


def axis_colors(axes: Iterable[str]) -> dict[str, str]:
    """{axis: colour} of a model's axes, in order: an HHH name keeps its colour, the others take `PALETTE`'s in turn."""
    free = iter(PALETTE)
    return {axis: AXIS_COLORS.get(axis) or next(free) for axis in axes}
MISROUTED_COLOR = "#dc2626"
"""Marks misrouted map points and tokens whose top expert flips between two routings."""

CSS = """
.ax-chips { line-height: 2.1; font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 0.95rem; overflow-wrap: anywhere; }
.ax-chip { border-radius: 4px; padding: 1px 2px; margin: 0 1px; white-space: pre-wrap; }
.ax-chip.ax-prompt { border: 1px dashed currentColor; }
.ax-chip.ax-flip { outline: 2px solid #dc2626; outline-offset: 1px; }
.ax-legend { display: flex; gap: 0.4rem 1rem; flex-wrap: wrap; align-items: center; font-size: 0.9rem; }
.ax-swatch { display: inline-block; width: 0.9rem; height: 0.9rem; border-radius: 3px; vertical-align: middle; margin-right: 0.3rem; }
.ax-swatch.ax-flip-swatch { background: transparent; outline: 2px solid #dc2626; }
.ax-notice { color: #b45309; font-size: 0.9rem; }
.wrap-inner .secondary-wrap input[role="combobox"] { padding-right: 1.75rem; text-overflow: ellipsis; }
.ax-worth { font-size: 0.85rem; margin: 0.2rem 0; padding: 0.3rem 0.5rem; border-left: 3px solid #6b7280; color: inherit; }
.dark .ax-notice { color: #fbbf24; }
.ax-chips.ax-empty { font-family: inherit; font-style: italic; font-size: 0.9rem; padding: 0.25rem 0; }
.ax-caption, .ax-caption p { font-size: 0.85rem; margin-top: 0; }
.ax-figures table, .ax-table table { width: 100%; }
.ax-table { overflow-x: auto; }
.ax-figures th, .ax-figures td, .ax-table th, .ax-table td {
  word-break: normal; overflow-wrap: normal; hyphens: none; white-space: normal; vertical-align: top;
}
.ax-table td, .ax-figures td { font-variant-numeric: tabular-nums; }
.ax-plot .modebar-container .modebar { top: 2px; }
.ax-download .file-preview .filename, .ax-download .file-preview .stem { flex-shrink: 0; overflow: visible; text-overflow: clip; }
.ax-download .file-preview tr.file { flex-wrap: wrap; }
@media (max-width: 640px) {
  /* on a phone the Live prompt comes first: the stories move below the prompt and its link row */
  #tab-live > .column > #stories { order: 1; }
  #tab-live > .column > .ax-link-row ~ * { order: 2; }
  .ax-chips { font-size: 0.85rem; }
  .ax-legend { font-size: 0.8rem; }
  .ax-table th, .ax-table td, .ax-figures th, .ax-figures td { font-size: 0.8rem; padding: 4px 6px; }
}
/* plot text follows the theme (plotly's own grey is under 4.5:1 on dark); tables of the collapse, analysis, benchmarks tabs */
.js-plotly-plot :is(.xtick, .ytick) text,
.js-plotly-plot :is(.gtitle, .legendtext, .bartext, .xtitle, .ytitle),
.ax-plot:not(.ax-cells) .annotation-text {
  fill: var(--body-text-color) !important;
}
:is(#tab-collapse, #tab-analysis, #tab-benchmarks) .ax-table :is(td, th):first-child {
  position: sticky; left: 0; z-index: 1; background: var(--block-background-fill);
}
.ax-scroll-hint { display: none !important; }
@media (max-width: 640px) {
  .ax-scroll-hint { display: block !important; }
  .ax-scroll-hint p { margin: 0; font-size: 0.8rem; font-style: italic; text-align: right; }
}
"""


def _rgb(hex_color: str) -> tuple[int, int, int]:
    return int(hex_color[1:3], 16), int(hex_color[3:5], 16), int(hex_color[5:7], 16)


def _hex(channels: list[float]) -> str:
    return "#" + "".join(f"{max(0, min(255, round(v))):02x}" for v in channels)


def mix_color(weights: dict[str, float]) -> str:
    """The weighted mix of the axis colours (`axis_colors` of the weights' axes, in their order), as a CSS hex colour."""
    colors = axis_colors(weights)
    return _hex([sum(w * _rgb(colors[axis])[c] for axis, w in weights.items()) for c in range(3)])


def muted(color: str) -> str:
    """`color` halfway to a neutral grey: the (opaque) background of prompt-token chips."""
    return _hex([(a + b) / 2 for a, b in zip(_rgb(color), _rgb(PROMPT_GREY))])


PROMPT_GREY = "#9ca3af"
TEXT_ON_COLOR = ("#000000", "#ffffff")


def luminance(color: str) -> float:
    """WCAG 2 relative luminance of a hex colour."""
    def linear(v: int) -> float:
        c = v / 255
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (linear(v) for v in _rgb(color))
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(a: str, b: str) -> float:
    """WCAG 2 contrast ratio of two hex colours (1 to 21; text needs 4.5 for AA)."""
    high, low = sorted((luminance(a), luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def text_color(background: str) -> str:
    """Black or white, whichever contrasts more with `background` (always at least 4.58:1, above WCAG AA)."""
    return max(TEXT_ON_COLOR, key=lambda c: contrast(c, background))
