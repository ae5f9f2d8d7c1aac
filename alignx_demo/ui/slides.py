"""Exports of one or more routed runs for slides: a self-contained HTML page and a PNG picture.

Each panel is a (label, trace) pair — e.g. "Calibrated" and "Uncalibrated", or the four trade-off
presets — shown with its prompt, its token chips coloured as on the page, its routing and generation
settings, its run weights and the model. The HTML reuses the page's chips, legend and CSS (hover details
kept in the chips' `title`), escapes every string it embeds, and inlines plotly.js once, so the file
opens offline from a USB stick. The PNG is drawn with Pillow: one picture to drop on a slide, printable
on white.
"""

from __future__ import annotations

import datetime
import functools
import html
import io
from collections.abc import Iterator
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from alignx_demo.config import AXES
from alignx_demo.ui.chips import chips_html, legend_html, notice_html
from alignx_demo.ui.exports import export_folder
from alignx_demo.ui.plots import CONFIG
from alignx_demo.ui.runner import shares
from alignx_demo.ui.theme import AXIS_LABELS, CSS, axis_colors, mix_color, muted, text_color

SLIDE_CSS = """
body { margin: 0; background: #ffffff; color: #111827;
       font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
main { max-width: 1280px; margin: 0 auto; padding: 1.5rem; }
h1 { font-size: 1.6rem; margin: 0 0 0.4rem; }
h2 { font-size: 1.15rem; margin: 0 0 0.3rem; }
.sl-panels { display: grid; gap: 1.25rem; margin: 1rem 0; }
.sl-cols-1 { grid-template-columns: minmax(0, 1fr); }
.sl-cols-2 { grid-template-columns: repeat(2, minmax(0, 1fr)); }
.sl-panel { border: 1px solid #d1d5db; border-radius: 8px; padding: 0.75rem 1rem; break-inside: avoid; }
.sl-meta, .sl-settings, footer { color: #4b5563; font-size: 0.85rem; margin: 0.2rem 0; }
.sl-prompt { white-space: pre-wrap; overflow-wrap: anywhere; margin: 0.5rem 0; }
.sl-figure { margin: 1rem 0; break-inside: avoid; }
footer { border-top: 1px solid #e5e7eb; margin-top: 1.5rem; padding-top: 0.5rem; }
@media (max-width: 700px) { .sl-cols-2 { grid-template-columns: minmax(0, 1fr); } }
@media print { body { -webkit-print-color-adjust: exact; print-color-adjust: exact; } main { max-width: none; } }
"""
"""Page layout of the export, on top of the app's `theme.CSS` (chips, legend, notices)."""

PNG_WIDTH = 1600
MARGIN = 48
GAP = 40
INK, GREY, AMBER = "#111827", "#4b5563", "#b45309"
FONT_FILES = {
    "regular": ("DejaVuSans.ttf", "LiberationSans-Regular.ttf"),
    "bold": ("DejaVuSans-Bold.ttf", "LiberationSans-Bold.ttf"),
    "mono": ("DejaVuSansMono.ttf", "LiberationMono-Regular.ttf"),
}
"""TrueType files tried by name (Pillow searches the system's font folders), else Pillow's built-in font."""
CHIP_PX, CHIP_LINE_PX, CHIP_PAD, CHIP_GAP = 22, 36, 4, 3
CHIP_LINES = {"wide": 16, "grid": 10}
"""Chip lines drawn per panel (side by side, or in the grid of more than two), then "… +N more tokens"."""


def _text(value: Any) -> str:
    """`value` escaped for HTML content and quoted attributes: every visitor or model string passes here."""
    return html.escape(str(value))


def run_settings(trace: dict[str, Any]) -> str:
    """The run's routing and generation settings and its length, in one line of words."""
    settings = trace.get("settings") or {}
    routing, generation = settings.get("routing") or {}, settings.get("generation") or {}
    parts = [("calibrated" if routing.get("calibrated") else "uncalibrated") + f" · {routing.get('mode', '?')}"]
    prior = routing.get("axis_prior")
    if prior:
        blend = float(routing.get("prior_blend", 1.0))
        parts.append("prior " + "/".join(f"{float(v):.2f}" for v in prior) + f" (blend {blend:.2f})")
    else:
        parts.append("no prior")
    if generation:
        how = (f"sampling T={generation.get('temperature')}, top-p {generation.get('top_p')}"
               if generation.get("do_sample") else "greedy")
        parts.append(f"≤{generation.get('max_new_tokens')} new tokens · seed {generation.get('seed')} · {how}")
    tokens = trace.get("tokens") or []
    generated = sum(not t["is_prompt"] for t in tokens)
    finish = trace.get("finish_reason") or "running"
    parts.append(f"{generated} generated + {len(tokens) - generated} prompt tokens · finish: {finish}")
    return " · ".join(parts)


def run_weights(trace: dict[str, Any]) -> str:
    """The run's weight of each axis (`runner.shares`, as the page's summaries show them)."""
    share = shares(trace)
    return "Run weights: " + " · ".join(f"{AXIS_LABELS[a]} {share.get(a, 0.0):.0%}" for a in _axes([("", trace)]))


def _axes(panels: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """The runs' axes (one model's: the first run's), the HHH ones for runs that do not say."""
    return list(panels[0][1].get("axes") or AXES) if panels else list(AXES)


def _models(panels: list[tuple[str, dict[str, Any]]]) -> str:
    """The panels' models, each named once (a comparison of two models names both)."""
    names = dict.fromkeys(str(trace.get("model", "")) for _, trace in panels if trace.get("model"))
    return ", ".join(names) or "unknown"


def footer_text(panels: list[tuple[str, dict[str, Any]]]) -> str:
    """Where the picture comes from, for a slide shown without the app: the model, the app and the date."""
    return f"Model: {_models(panels)} · exported from AlignX Demo on {datetime.date.today().isoformat()}"


def _columns(n_panels: int) -> int:
    """One column for one panel, else two: side by side for two, a 2 × 2 grid for four."""
    return 1 if n_panels <= 1 else 2


def _panel_html(label: str, trace: dict[str, Any]) -> str:
    notices = "".join(notice_html(str(n)) for n in trace.get("notices") or [])
    return (
        f'<article class="sl-panel"><h2>{_text(label)}</h2>'
        f'<p class="sl-meta">{_text(run_settings(trace))}</p><p class="sl-meta">{_text(run_weights(trace))}</p>'
        f'<p class="sl-prompt"><b>Prompt:</b> {_text(trace.get("prompt", ""))}</p>'
        f'{chips_html(trace.get("tokens") or [], empty="No tokens.")}{notices}'
        f'<p class="sl-meta">Model: {_text(trace.get("model", "unknown"))}</p></article>'
    )


def _figures_html(figures: list[Any]) -> str:
    """Each figure's div; plotly.js inlined with the first only (no CDN: the file works offline)."""
    return "".join(
        f'<div class="sl-figure">{fig.to_html(full_html=False, include_plotlyjs=i == 0, config=CONFIG)}</div>'
        for i, fig in enumerate(figures)
    )


def slides_html(panels: list[tuple[str, dict[str, Any]]], title: str, settings_line: str | None = None,
                figures: list[Any] | None = None, notice: str | None = None) -> str:
    """A self-contained HTML page of the panels (and Plotly `figures`), every embedded string escaped."""
    settings = f'<p class="sl-settings">{_text(settings_line)}</p>' if settings_line else ""
    body = "".join(_panel_html(label, trace) for label, trace in panels)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_text(title)}</title><style>{CSS}{SLIDE_CSS}</style></head>\n<body><main>"
        f"<header><h1>{_text(title)}</h1>{settings}{notice_html(notice)}{legend_html(axes=_axes(panels))}</header>"
        f'<section class="sl-panels sl-cols-{_columns(len(panels))}">{body}</section>'
        f"{_figures_html(figures or [])}<footer>{_text(footer_text(panels))}</footer></main></body></html>\n"
    )


@functools.lru_cache(maxsize=None)
def _font(kind: str, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    for name in FONT_FILES[kind]:
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default(size=size)


def _fit(text: str, font: Any, width: float) -> int:
    """How many leading characters of `text` fit in `width` pixels (binary search; at least 1)."""
    low, high = 1, len(text)
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if font.getlength(text[:mid]) <= width else (low, mid - 1)
    return low


def _ellipsis(line: str, font: Any, width: float) -> str:
    """`line` shortened to end with "…" within `width` pixels: text was left out after it."""
    while line and font.getlength(line + "…") > width:
        line = line[:-1]
    return line + "…"


def _wrap(text: str, font: Any, width: float, max_lines: int) -> list[str]:
    """`text` broken between words (inside a word too long for a line) into at most `max_lines` lines,
    the last ending with "…" when some was left out."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}" if line else word
            if font.getlength(candidate) > width:
                if line:
                    lines.append(line)
                while font.getlength(word) > width and len(lines) <= max_lines:
                    cut = _fit(word, font, width)
                    lines.append(word[:cut])
                    word = word[cut:]
                candidate = word
            line = candidate
            if len(lines) > max_lines:
                break
        lines.append(line)
        if len(lines) > max_lines:
            break
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = _ellipsis(lines[-1], font, width)
    return lines


def _draw_text(draw: ImageDraw.ImageDraw, text: str, top: int, width: int, kind: str, size: int, fill: str,
               max_lines: int) -> int:
    """Draw `text` wrapped to `width` from `top`; the y below it."""
    font = _font(kind, size)
    for line in _wrap(text, font, width, max_lines):
        draw.text((0, top), line, font=font, fill=fill)
        top += round(size * 1.35)
    return top


def _chip_pieces(token: dict[str, Any]) -> Iterator[tuple[str, bool]]:
    """(text, line break after) of a token as drawn: "↵" marks each newline, "∅" an empty token."""
    if not token["text"]:
        yield "∅", False
        return
    parts = token["text"].replace("\t", "    ").split("\n")
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part or not last:
            yield (part if last else part + "↵"), not last


def _chip_layout(tokens: list[dict[str, Any]], font: Any, width: int) -> list[tuple[int, float, str, str, int]]:
    """(line, x, text, fill, token index) of every chip piece, wrapped to `width` like the page's chips."""
    boxes: list[tuple[int, float, str, str, int]] = []
    line, x = 0, 0.0
    for index, token in enumerate(tokens):
        fill = muted(mix_color(token["weights"])) if token["is_prompt"] else mix_color(token["weights"])
        for text, breaks in _chip_pieces(token):
            while text:
                room = width - x - 2 * CHIP_PAD
                if x > 0 and font.getlength(text) > room:
                    line, x = line + 1, 0.0
                    continue
                piece = text[:_fit(text, font, room)]
                boxes.append((line, x, piece, fill, index))
                x += font.getlength(piece) + 2 * CHIP_PAD + CHIP_GAP
                text = text[len(piece):]
                if text:
                    line, x = line + 1, 0.0
            if breaks:
                line, x = line + 1, 0.0
    return boxes


def _draw_chips(draw: ImageDraw.ImageDraw, tokens: list[dict[str, Any]], top: int, width: int, max_lines: int) -> int:
    """Draw the tokens' chips from `top`, at most `max_lines` lines, then how many tokens were left out; the y below."""
    if not tokens:
        return _draw_text(draw, "No tokens.", top, width, "regular", 20, GREY, 1)
    font = _font("mono", CHIP_PX)
    boxes = _chip_layout(tokens, font, width)
    shown = [box for box in boxes if box[0] < max_lines]
    height = CHIP_LINE_PX - 6
    for line, x, piece, fill, _ in shown:
        y = top + line * CHIP_LINE_PX
        draw.rounded_rectangle((x, y, x + font.getlength(piece) + 2 * CHIP_PAD, y + height), radius=5, fill=fill)
        draw.text((x + CHIP_PAD, y + height / 2), piece, font=font, fill=text_color(fill), anchor="lm")
    bottom = top + (shown[-1][0] + 1) * CHIP_LINE_PX
    if len(shown) < len(boxes):
        hidden = len(tokens) - boxes[len(shown)][4]
        bottom = _draw_text(draw, f"… +{hidden} more token(s)", bottom, width, "regular", 20, GREY, 1)
    return bottom


def _panel_png(label: str, trace: dict[str, Any], width: int, max_lines: int) -> Image.Image:
    """One panel's picture, `width` wide: label, settings, run weights, prompt, chips."""
    image = Image.new("RGB", (width, 400 + (max_lines + 1) * CHIP_LINE_PX), "white")  # tall enough; cropped below
    draw = ImageDraw.Draw(image)
    y = _draw_text(draw, str(label), 0, width, "bold", 28, INK, 2)
    y = _draw_text(draw, run_settings(trace), y + 4, width, "regular", 18, GREY, 3)
    y = _draw_text(draw, run_weights(trace), y, width, "regular", 18, GREY, 1)
    y = _draw_text(draw, f"Prompt: {trace.get('prompt', '')}", y + 8, width, "regular", 20, INK, 3)
    y = _draw_chips(draw, trace.get("tokens") or [], y + 10, width, max_lines)
    return image.crop((0, 0, width, y))


def _header_png(title: str, settings_line: str | None, notice: str | None, width: int) -> Image.Image:
    """The title, the settings line and the notice, `width` wide."""
    image = Image.new("RGB", (width, 300), "white")
    draw = ImageDraw.Draw(image)
    y = _draw_text(draw, title, 0, width, "bold", 40, INK, 2)
    if settings_line:
        y = _draw_text(draw, settings_line, y + 4, width, "regular", 20, GREY, 2)
    if notice:
        y = _draw_text(draw, f"⚠ {notice}", y + 4, width, "regular", 20, AMBER, 2)
    return image.crop((0, 0, width, y))


def _footer_png(panels: list[tuple[str, dict[str, Any]]], width: int) -> Image.Image:
    """The legend (a swatch per axis colour) and the model and export line."""
    image = Image.new("RGB", (width, 120), "white")
    draw = ImageDraw.Draw(image)
    font, x = _font("regular", 20), 0.0
    axes = _axes(panels)
    for axis, color in axis_colors(axes).items():
        draw.rounded_rectangle((x, 4, x + 22, 26), radius=4, fill=color)
        name = f"{AXIS_LABELS[axis]} expert"
        draw.text((x + 30, 15), name, font=font, fill=INK, anchor="lm")
        x += 30 + font.getlength(name) + 28
    rest = f"· chip colour = mix of the {'three' if len(axes) == 3 else len(axes)} routing weights · greyer = prompt token"
    draw.text((x, 15), _wrap(rest, font, width - x, 1)[0], font=font, fill=GREY, anchor="lm")
    y = _draw_text(draw, footer_text(panels), 40, width, "regular", 18, GREY, 2)
    return image.crop((0, 0, width, y))


def slides_png(panels: list[tuple[str, dict[str, Any]]], title: str, settings_line: str | None = None,
               notice: str | None = None) -> bytes:
    """A PNG, `PNG_WIDTH` wide, of the panels: side by side for two, a 2 × 2 grid for four."""
    inner, pad = PNG_WIDTH - 2 * MARGIN, GAP // 2
    cols = _columns(len(panels))
    panel_w = (inner - (cols - 1) * GAP) // cols
    max_lines = CHIP_LINES["wide" if len(panels) <= 2 else "grid"]
    images = [_panel_png(label, trace, panel_w - 2 * pad, max_lines) for label, trace in panels]
    rows = [images[i:i + cols] for i in range(0, len(images), cols)]
    heights = [max(image.height for image in row) + 2 * pad for row in rows]
    header, footer = _header_png(title, settings_line, notice, inner), _footer_png(panels, inner)
    total = 2 * MARGIN + header.height + sum(h + GAP for h in heights) + GAP + footer.height
    canvas = Image.new("RGB", (PNG_WIDTH, total), "white")
    draw = ImageDraw.Draw(canvas)
    canvas.paste(header, (MARGIN, MARGIN))
    y = MARGIN + header.height + GAP
    for row, height in zip(rows, heights):
        for col, image in enumerate(row):
            x = MARGIN + col * (panel_w + GAP)
            draw.rounded_rectangle((x, y, x + panel_w, y + height), radius=10, outline="#d1d5db", width=2)
            canvas.paste(image, (x + pad, y + pad))
        y += height + GAP
    canvas.paste(footer, (MARGIN, y))
    out = io.BytesIO()
    canvas.save(out, format="PNG")
    return out.getvalue()


def write_slides(stem: str, panels: list[tuple[str, dict[str, Any]]], title: str, settings_line: str | None = None,
                 figures: list[Any] | None = None, notice: str | None = None) -> tuple[str, str]:
    """Write `<stem>.html` and `<stem>.png` into a fresh temp folder, removed after `exports.KEEP_S` like every
    export; return their paths."""
    page = slides_html(panels, title, settings_line, figures, notice)
    picture = slides_png(panels, title, settings_line, notice)
    folder = export_folder()
    html_path, png_path = folder / f"{stem}.html", folder / f"{stem}.png"
    html_path.write_text(page, encoding="utf-8")
    png_path.write_bytes(picture)
    return str(html_path), str(png_path)


KINDS = ("HTML", "PNG", "CSV", "JSON")
"""The downloads of a run, in the order `download_row` shows them."""


def download_row(elem_prefix: str, kinds: tuple[str, ...] = KINDS) -> list[Any]:
    """Hidden download buttons, one per kind, each labelled with its format (shown when a run completes)."""
    import gradio as gr

    labels = {"HTML": "Download for slides (HTML)", "PNG": "Download picture (PNG)", "CSV": "Download (CSV)",
              "JSON": "Download (JSON)"}
    with gr.Row(elem_classes=["ax-download-row"]):
        return [gr.DownloadButton(labels[k], visible=False, size="sm", elem_id=f"{elem_prefix}-{k.lower()}") for k in kinds]


def download_updates(paths: list[str] | None, n: int = len(KINDS)) -> list[Any]:
    """Updates of a `download_row`: each button shows its file, or all hide (`paths` None)."""
    import gradio as gr

    if paths is None:
        return [gr.DownloadButton(value=None, visible=False) for _ in range(n)]
    return [gr.DownloadButton(value=path, visible=True) for path in paths]


def write_run_downloads(stem: str, panels: list[tuple[str, dict[str, Any]]], title: str, data: Any,
                        figures: list[Any] | None = None, notice: str | None = None) -> list[str]:
    """The HTML and PNG for slides and the CSV (one row per token, a `run` column naming the panel) and JSON
    (`data`, as the API returns it) of a run, in `KINDS` order."""
    from alignx_demo.ui.exports import runs_csv, write_downloads

    page, picture = write_slides(stem, panels, title, figures=figures, notice=notice)
    csv_path, json_path = write_downloads(stem, runs_csv(panels), data)
    return [page, picture, csv_path, json_path]
