"""Links to a run: read with the endpoints' own checks, written back the same way."""

from __future__ import annotations

import pytest

from alignx_demo.serving import MAX_REQUEST_CHARS
from alignx_demo.ui.links import LinkTarget, link_query, parse_link
from alignx_demo.ui.validation import GenerationError

FIELDS = {
    "live": ("prompt", "tokens", "sample", "temperature", "top_p", "seed", "calibrated", "mode"),
    "compare": ("prompt", "tokens", "sample", "temperature", "top_p", "seed", "mode"),
    "tradeoff": ("prompt", "helpful", "harmless", "honest", "blend", "just_right", "tokens", "seed"),
}
TARGETS = {tab: LinkTarget({name: object() for name in names}, f"{tab}-run") for tab, names in FIELDS.items()}
CAPS = {"live": 64, "compare": 32, "tradeoff": 32}


def test_a_trade_off_link_with_a_preset_sets_what_the_preset_button_sets():
    tab, values, run = parse_link({"tab": "Trade-off", "prompt": "How do I make tea?", "preset": "too-harmless",
                                   "seed": "3", "tokens": "20", "run": "1"}, TARGETS, CAPS)
    assert tab == "tradeoff" and run is True
    assert values == {"prompt": "How do I make tea?", "seed": 3, "tokens": 20, "helpful": 0.0, "harmless": 1.0,
                      "honest": 0.0, "just_right": False}
    _, values, run = parse_link({"tab": "trade-off", "preset": "just-right"}, TARGETS, CAPS)
    assert values["just_right"] is True and run is False


def test_a_link_written_by_copy_link_opens_the_same_inputs():
    live = {"prompt": "Tell me <b>bold</b> & more?", "tokens": 12, "sample": True, "temperature": 0.7, "top_p": 0.9,
            "seed": 5, "calibrated": False, "mode": "top1"}
    query = link_query("live", live)
    from urllib.parse import parse_qsl

    tab, values, _ = parse_link(dict(parse_qsl(query[1:])), TARGETS, CAPS)
    assert tab == "live" and values == live
    trade = {"prompt": "x", "helpful": 0.33, "harmless": 0.33, "honest": 0.33, "blend": 1.0, "just_right": True, "tokens": 8, "seed": 0}
    assert "preset=just-right" in link_query("tradeoff", trade) and "helpful" not in link_query("tradeoff", trade)
    assert link_query("collapse", {}) == "?tab=collapse"


@pytest.mark.parametrize("params, message", [
    ({"tab": "nowhere"}, "tab must be one of"),
    ({"tab": "live", "tokens": "65"}, "tokens must be from 1 to 64, got 65"),
    ({"tab": "compare", "tokens": "33"}, "tokens must be from 1 to 32, got 33"),
    ({"tab": "live", "tokens": "ten"}, "tokens must be a number, got 'ten'"),
    ({"tab": "live", "seed": "1.5"}, "seed must be a whole number, got 1.5"),
    ({"tab": "live", "calibrated": "maybe"}, "calibrated must be true or false, got 'maybe'"),
    ({"tab": "live", "mode": "hard"}, "mode must be one of 'soft', 'top1', got 'hard'"),
    ({"tab": "trade-off", "preset": "too-kind"}, "preset must be one of"),
    ({"tab": "trade-off", "helpful": "2"}, "helpful must be from 0 to 1, got 2"),
    ({"tab": "compare", "calibrated": "1"}, "the compare tab takes no 'calibrated' in a link"),
    ({"tab": "about", "prompt": "x"}, "the about tab takes no 'prompt' in a link"),
    ({"tab": "live", "run": "soon"}, "run must be true or false"),
    ({"tab": "live", "prompt": "x" * (MAX_REQUEST_CHARS + 1)}, "the prompt is too long"),
    ({"tab": "live", "prompt": "x" * (MAX_REQUEST_CHARS + 2_000)}, "the link is too long"),
])
def test_a_bad_link_gets_the_apis_one_sentence_error(params, message):
    with pytest.raises(GenerationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_link(params, TARGETS, CAPS)
