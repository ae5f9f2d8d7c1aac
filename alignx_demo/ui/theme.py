"""One fixed colour per HHH axis, used identically by every tab and plot, and the page's CSS."""

from __future__ import annotations

from alignx_demo.config import AXES

AXIS_COLORS: dict[str, str] = {"helpful": "#2563eb", "harmless": "#16a34a", "honest": "#d97706"}
AXIS_LABELS: dict[str, str] = {"helpful": "Helpful", "harmless": "Harmless", "honest": "Honest"}
assert tuple(AXIS_COLORS) == AXES
MISROUTED_COLOR = "#dc2626"
"""Marks misrouted map points and tokens whose top expert flips between two routings."""

CSS = """
.ax-chips { line-height: 2.1; font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 0.95rem; overflow-wrap: anywhere; }
.ax-chip { border-radius: 4px; padding: 1px 2px; margin: 0 1px; white-space: pre-wrap; color: #fff; }
.ax-chip.ax-prompt { opacity: 0.55; border: 1px dashed currentColor; }
.ax-chip.ax-flip { outline: 2px solid #dc2626; outline-offset: 1px; }
.ax-legend { display: flex; gap: 0.4rem 1rem; flex-wrap: wrap; align-items: center; font-size: 0.9rem; }
.ax-swatch { display: inline-block; width: 0.9rem; height: 0.9rem; border-radius: 3px; vertical-align: middle; margin-right: 0.3rem; }
.ax-swatch.ax-flip-swatch { background: transparent; outline: 2px solid #dc2626; }
.ax-notice { color: #b45309; font-size: 0.9rem; }
.ax-empty { opacity: 0.7; font-style: italic; }
.ax-figures table { width: 100%; }
@media (max-width: 640px) {
  .ax-chips { font-size: 0.85rem; }
  .ax-legend { font-size: 0.8rem; }
}
"""


def _rgb(hex_color: str) -> tuple[int, int, int]:
    return int(hex_color[1:3], 16), int(hex_color[3:5], 16), int(hex_color[5:7], 16)


def mix_color(weights: dict[str, float]) -> str:
    """The weighted mix of the three axis colours, as a CSS hex colour."""
    channels = [sum(weights.get(axis, 0.0) * _rgb(AXIS_COLORS[axis])[c] for axis in AXES) for c in range(3)]
    return "#" + "".join(f"{max(0, min(255, round(v))):02x}" for v in channels)
