"""Links to a run: the URL holds the tab and its inputs, e.g.

    ?tab=trade-off&prompt=How+do+I+make+tea%3F&preset=just-right&seed=0&tokens=40&run=1

Opening such a link selects the tab and fills its inputs; `run=1` then presses the tab's run button,
so a link runs exactly what the same click would, under the operator's limits. Every value is
checked by the endpoints' own validators (`ui.validation`): a bad or oversized one is refused with
the same one-sentence error as the API, and the page opens as usual. "Copy link" on each tab writes
the link of what the tab's inputs hold now (the query here; the page adds its address and copies it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import gradio as gr

from alignx_demo.config import PRESETS
from alignx_demo.serving import MAX_REQUEST_CHARS
from alignx_demo.ui.validation import (
    MODES, SEED_MAX, TEMPERATURE_RANGE, TOP_P_RANGE, GenerationError, flag, number, one_of, request_text,
)

TABS = {"live": "live", "compare": "compare", "collapse": "collapse", "axis-collapse": "collapse", "trade-off": "tradeoff",
        "tradeoff": "tradeoff", "analysis": "analysis", "routing-analysis": "analysis", "benchmarks": "benchmarks",
        "about": "about", "live-routing": "live"}
"""Tab names a link may use (lowercase, spaces as hyphens) → the page's tab ids."""
SLUGS = {"live": "live", "compare": "compare", "collapse": "collapse", "tradeoff": "trade-off", "analysis": "analysis",
         "benchmarks": "benchmarks", "about": "about"}
"""The name each tab's own links use."""
MAX_LINK_CHARS = MAX_REQUEST_CHARS + 1_000
"""A link longer than this is refused before its values are read."""
PRESET_SLUGS = {name.replace(" ", "-"): name for name in PRESETS}


@dataclass
class LinkTarget:
    """What a tab lets a link set: its input components by link name, and the elem_id of its run button."""

    fields: dict[str, Any] = field(default_factory=dict)
    run_button: str | None = None


def _value(text: str) -> Any:
    """A link's text as the number or flag it spells (left as text when it spells neither, so that the
    validators name it in their error)."""
    lowered = text.strip().lower()
    if lowered in ("true", "false", "1", "0", "yes", "no", "on", "off"):
        return lowered in ("true", "1", "yes", "on")
    try:
        number_ = float(lowered)
    except ValueError:
        return text
    return int(number_) if math.isfinite(number_) and number_.is_integer() and "." not in lowered else number_


def _numeric(text: str) -> Any:
    value = _value(text)
    return int(value) if isinstance(value, bool) else value


CHECKS: dict[str, Callable[[str, int], Any]] = {
    "prompt": lambda v, cap: request_text(v),
    "tokens": lambda v, cap: number(_numeric(v), "tokens", 1, cap, whole=True),
    "seed": lambda v, cap: number(_numeric(v), "seed", 0, SEED_MAX, whole=True),
    "calibrated": lambda v, cap: flag(_value(v), "calibrated"),
    "sample": lambda v, cap: flag(_value(v), "sample"),
    "mode": lambda v, cap: one_of(v, "mode", MODES),
    "temperature": lambda v, cap: number(_numeric(v), "temperature", *TEMPERATURE_RANGE),
    "top_p": lambda v, cap: number(_numeric(v), "top_p", *TOP_P_RANGE),
    "helpful": lambda v, cap: number(_numeric(v), "helpful", 0, 1),
    "harmless": lambda v, cap: number(_numeric(v), "harmless", 0, 1),
    "honest": lambda v, cap: number(_numeric(v), "honest", 0, 1),
    "blend": lambda v, cap: number(_numeric(v), "blend", 0, 1),
    "preset": lambda v, cap: PRESET_SLUGS[one_of(v, "preset", tuple(PRESET_SLUGS))],
    "just_right": lambda v, cap: flag(_value(v), "just_right"),
}
"""How each link parameter is read and checked (`cap`: the tab's highest number of new tokens)."""


def preset_values(name: str) -> dict[str, Any]:
    """The Trade-off inputs a preset sets (as its button does): the sliders' prior, or "just right"."""
    prior = PRESETS[name]
    even = round(1 / 3, 2)
    if prior is None:
        return {"helpful": even, "harmless": even, "honest": even, "just_right": True}
    return dict(zip(("helpful", "harmless", "honest"), prior)) | {"just_right": False}


def parse_link(params: Mapping[str, str], targets: Mapping[str, LinkTarget], caps: Mapping[str, int]) -> tuple[str, dict[str, Any], bool]:
    """(tab id, checked input values by link name, run) of a link's query; GenerationError for a bad one."""
    if sum(len(k) + len(v) for k, v in params.items()) > MAX_LINK_CHARS:
        raise GenerationError(f"the link is too long (at most {MAX_LINK_CHARS:,} characters)")
    name = str(params.get("tab", "live")).strip().lower().replace(" ", "-")
    if name not in TABS:
        raise GenerationError(f"tab must be one of {', '.join(repr(s) for s in SLUGS.values())}, got {name[:40]!r}")
    tab = TABS[name]
    allowed = set(targets.get(tab, LinkTarget()).fields) | ({"preset"} if tab == "tradeoff" else set())
    values: dict[str, Any] = {}
    for key, text in params.items():
        if key in ("tab", "run"):
            continue
        if key not in allowed:
            raise GenerationError(f"the {SLUGS[tab]} tab takes no {key[:40]!r} in a link"
                                  + (f"; it takes {', '.join(sorted(allowed))}" if allowed else ""))
        values[key] = CHECKS[key](text, caps.get(tab, 1))
    if "preset" in values:
        values |= preset_values(values.pop("preset"))
    return tab, values, flag(_value(params.get("run", "0")), "run")


def link_query(tab: str, values: Mapping[str, Any]) -> str:
    """The query of a link to `tab` with these input values (flags as 1/0, the prompt as typed)."""
    shown = {"tab": SLUGS[tab]}
    for key, value in values.items():
        if key == "just_right" or value is None:
            continue
        shown[key] = str(int(value)) if isinstance(value, bool) else str(value)
    if values.get("just_right"):
        for key in ("helpful", "harmless", "honest", "blend"):
            shown.pop(key, None)
        shown["preset"] = "just-right"
    return "?" + urlencode(shown)


RUN_JS = """(button) => {
  if (!button) { return null; }
  let tries = 0;
  const press = () => {
    const b = document.getElementById(button);
    if (b) { b.click(); } else if (++tries < 50) { setTimeout(press, 100); }
  };
  setTimeout(press, 0);
  return null;
}"""
"""Presses the linked tab's run button once the tab has rendered it (the page's own click, so the run is what a visitor's click would be)."""
COPY_JS = """(query) => {
  if (!query) { return query; }
  const url = location.origin + location.pathname + query;
  history.replaceState(null, "", url);
  if (navigator.clipboard && window.isSecureContext) { navigator.clipboard.writeText(url).catch(() => {}); }
  return url;
}"""
"""Turns the query into the page's full link, puts it in the address bar and copies it where the browser allows."""
TAB_JS = """() => {
  const u = new URL(location.href);
  if (!window.axLinkOpened || u.searchParams.get("tab") === "%s") { return; }
  u.search = "?tab=%s"; history.replaceState(null, "", u);
}"""
"""On selecting a tab, the address bar names it (so a plain copy of the address opens that tab); only once the
page's own link has been read and only when the tab changes, so that opening a link never rewrites it."""
OPENED_JS = """() => { window.axLinkOpened = true; return null; }"""


def open_link(request: gr.Request | None, targets: Mapping[str, LinkTarget], caps: Mapping[str, int]) -> list[Any]:
    """Updates for the page's load: the linked tab selected, its inputs filled, and the run button to press
    (None unless `run=1`); nothing for a page opened without a query. A bad link raises the one-sentence error."""
    order = [c for t in targets.values() for c in t.fields.values()]
    params = {k: v for k, v in dict(getattr(request, "query_params", {}) or {}).items() if not k.startswith("_")}
    if not params:  # no link (Gradio's own parameters, e.g. __theme, are not ours)
        return [gr.skip(), *(gr.skip() for _ in order), None]
    try:
        tab, values, run = parse_link(params, targets, caps)
    except GenerationError as err:
        raise gr.Error(f"This link cannot be opened: {err}.", print_exception=False) from None
    fields = targets.get(tab, LinkTarget()).fields
    updates = {id(fields[k]): v for k, v in values.items() if k in fields}
    button = targets[tab].run_button if run and tab in targets else None
    return [gr.Tabs(selected=tab), *(updates.get(id(c), gr.skip()) for c in order), button]


def copy_link_row(tab: str, target: LinkTarget | None = None) -> None:
    """A "Copy link" button and the link it made, for `tab` (inside its gr.Tab)."""
    fields = (target or LinkTarget()).fields
    with gr.Row(elem_classes=["ax-link-row"]):
        button = gr.Button("Copy link", size="sm", elem_id=f"{tab}-copy-link", scale=0, min_width=120)
        box = gr.Textbox(show_label=False, interactive=False, visible=True, container=False, elem_id=f"{tab}-link",
                         placeholder="a link to this tab with its current inputs", scale=4)
    names = list(fields)

    def make(*values: Any) -> str:
        return link_query(tab, dict(zip(names, values)))

    button.click(make, inputs=list(fields.values()), outputs=box, api_visibility="private", queue=False,
                 show_progress="hidden").then(None, inputs=box, outputs=box, js=COPY_JS, api_visibility="private",
                                              queue=False, show_progress="hidden")


def wire_links(demo: gr.Blocks, tabs: gr.Tabs, tab_items: Mapping[str, Any], targets: Mapping[str, LinkTarget],
               caps: Mapping[str, int]) -> None:
    """Open links on page load (select, fill, maybe run) and name the selected tab in the address bar."""
    order = [c for t in targets.values() for c in t.fields.values()]
    button = gr.Textbox(visible=False, elem_id="link-run-button")

    def opened(request: gr.Request) -> list[Any]:
        return open_link(request, targets, caps)

    loaded = demo.load(opened, outputs=[tabs, *order, button], api_visibility="private", show_progress="hidden")
    loaded.then(None, js=OPENED_JS, api_visibility="private", queue=False, show_progress="hidden")
    loaded.success(None, inputs=button, js=RUN_JS, api_visibility="private", queue=False, show_progress="hidden")
    for tab, item in tab_items.items():
        item.select(None, js=TAB_JS % (SLUGS[tab], SLUGS[tab]), api_visibility="private", queue=False, show_progress="hidden")
