"""Token chips: each token's background mixes the axis colours by its routing weights.

Chips are opaque and carry their own text colour (black or white, whichever contrasts more), so
they read the same in the light and the dark theme; prompt tokens are a greyer, dashed version.

Every string from a visitor or the model is HTML-escaped before it reaches the page; hover details
live in the `title` attribute, escaped too.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from typing import Any

from alignx_demo.config import AXES
from alignx_demo.ui.theme import AXIS_LABELS, axis_colors, mix_color, muted, text_color


def legend_html(flips: bool = False, axes: Sequence[str] = AXES) -> str:
    """The swatch of each of the model's `axes` and how to read the chips."""
    items = "".join(
        f'<span><span class="ax-swatch" style="background:{color}"></span>{html.escape(AXIS_LABELS[a])} expert</span>'
        for a, color in axis_colors(axes).items()
    )
    mix = "the three routing weights" if len(axes) == 3 else f"the {len(axes)} routing weights"
    extra = '<span><span class="ax-swatch ax-flip-swatch"></span>top expert differs between the two routings</span>' if flips else ""
    return (
        f'<div class="ax-legend">{items}{extra}'
        f"<span>· chip colour = mix of {mix} · greyer, dashed = prompt token · hover a chip for details</span></div>"
    )


def _visible(text: str) -> str:
    return text.replace("\n", "↵\n") if text else "∅"


def chip_title(token: dict[str, Any]) -> str:
    weights = ", ".join(f"{a} {w:.2f}" for a, w in token["weights"].items())
    layers = "\n".join(
        f"  layer {i}: " + " / ".join(f"{v:.2f}" for v in row) for i, row in enumerate(token["layers"])
    )
    kind = "prompt token" if token["is_prompt"] else "generated token"
    return (
        f"{kind} #{token['position']} (id {token['id']})\n{weights}\n"
        f"top expert: {token['top_expert']} · entropy {token['entropy']:.3f} nats\n"
        f"per layer ({' / '.join(token['weights'])}):\n{layers}"
    )


def chips_html(tokens: Iterable[dict[str, Any]], flips: dict[int, str] | None = None, empty: str = "",
               details: dict[int, str] | None = None, other: str = "the other routing") -> str:
    """Chips of the tokens; positions in `flips` are outlined, with `other`'s top expert in the hover;
    `details` adds lines to the hover of the tokens at those positions (e.g. their attribution)."""
    parts = []
    flips = flips or {}
    details = details or {}
    for token in tokens:
        cls = "ax-chip ax-prompt" if token["is_prompt"] else "ax-chip"
        title = chip_title(token)
        if token["position"] in flips:
            cls += " ax-flip"
            title += f"\ntop expert differs: {other} picks {flips[token['position']]}"
        if token["position"] in details:
            title += "\n" + details[token["position"]]
        background = mix_color(token["weights"])
        if token["is_prompt"]:
            background = muted(background)
        parts.append(
            f'<span class="{cls}" style="background:{background};color:{text_color(background)}" '
            f'title="{html.escape(title, quote=True)}">{html.escape(_visible(token["text"]))}</span>'
        )
    if not parts and empty:
        return f'<div class="ax-chips ax-empty">{html.escape(empty)}</div>'
    return f'<div class="ax-chips">{"".join(parts)}</div>'


def notice_html(message: str | None) -> str:
    """A visible notice (escaped); empty string when there is nothing to say."""
    return f'<p class="ax-notice">⚠ {html.escape(message)}</p>' if message else ""
