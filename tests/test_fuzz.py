"""The fuzz corpus (`fuzz_corpus.py`) against the app served in-process on 127.0.0.1: every call ends
in time with a valid result or a clear error, and the server still answers afterwards."""

from __future__ import annotations

import json
import time
from html.parser import HTMLParser
from typing import Any

import httpx
import pytest
from fuzz_corpus import CAP, CASES, Case
from test_app import launch

from alignx_demo.modeling import load_mocae
from alignx_demo.serving import Limits, ModelContext

CALL_LIMIT_S = 30.0
"""No single call may take longer than this (a hang fails the test instead of stalling it)."""
FINISH_REASONS = {"eos", "length", "time_limit"}
UNCLEAR = ("Traceback", 'File "', "verbose error reporting", "Exception:")


@pytest.fixture(scope="module")
def fuzz_app(trained_run, trained_precomputed):
    run, _ = trained_run
    limits = Limits(max_new_tokens=CAP, request_seconds=CALL_LIMIT_S / 2)
    demo, client = launch(ModelContext(load_mocae(run, load_in_4bit=False), limits=limits), trained_precomputed)
    yield demo, client
    demo.close()


def call_raw(url: str, api: str, args: tuple[Any, ...]) -> tuple[str, Any]:
    """One call over Gradio's plain HTTP API, JSON written by hand: ("ok", outputs) or ("error", message)."""
    body = json.dumps({"data": list(args)})  # ASCII JSON: lone surrogates as escapes, NaN and Infinity as Python writes them
    with httpx.Client(timeout=CALL_LIMIT_S) as http:
        posted = http.post(f"{url}/gradio_api/call{api}", content=body, headers={"content-type": "application/json"})
        if posted.status_code != 200:
            return "error", f"HTTP {posted.status_code}: {posted.text}"
        event, data = None, None
        with http.stream("GET", f"{url}/gradio_api/call{api}/{posted.json()['event_id']}") as stream:
            for line in stream.iter_lines():
                if line.startswith("event:"):
                    event = line.removeprefix("event:").strip()
                elif line.startswith("data:") and event in ("complete", "error"):
                    data = json.loads(line.removeprefix("data:"))
    if event == "complete":
        return "ok", tuple(data)
    return "error", (data or {}).get("error") if isinstance(data, dict) else data


def call(client: Any, url: str, case: Case) -> tuple[str, Any]:
    from gradio_client.exceptions import AppError

    if case.raw:
        return call_raw(url, case.api, case.args)
    try:
        out = client.submit(*case.args, api_name=case.api).result(timeout=CALL_LIMIT_S)
    except AppError as err:
        return "error", str(err.message)
    return "ok", out if isinstance(out, tuple) else (out,)


class Tags(HTMLParser):
    def __init__(self, page: str) -> None:
        super().__init__()
        self.tags: set[str] = set()
        self.feed(page)

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags.add(tag)


def check_trace(trace: dict[str, Any]) -> None:
    assert trace["finish_reason"] in FINISH_REASONS and trace["tokens"]
    assert isinstance(trace["prompt"], str) and trace["prompt"].strip()
    assert not any(0xD800 <= ord(c) <= 0xDFFF or ord(c) < 0x09 for c in trace["prompt"])


def check_result(api: str, out: tuple[Any, ...]) -> None:
    """What a valid result of each endpoint looks like; chips carry no markup but their own."""
    chips = [o for o in out if isinstance(o, str) and o.startswith("<div")]
    for page in chips:
        assert Tags(page).tags <= {"div", "span"}, page[:300]
    if api in ("/generate", "/tradeoff"):
        assert len(chips) == 1
        check_trace(out[2])
    elif api == "/compare":
        assert len(chips) == 2 and "flips" in out[3]["summary"]
        check_trace(out[3]["calibrated"])
        check_trace(out[3]["uncalibrated"])
    elif api == "/presets":
        assert len(chips) == 4 and list(out[4]) == ["too helpful", "too harmless", "too honest", "just right"]
        for preset in out[4].values():
            check_trace(preset["trace"])
    elif api == "/place_prompt":
        assert out[0]["regimes"] and isinstance(out[0]["prompt"], str)


def check_message(message: Any) -> None:
    """A clear error: a sentence of a few words, not a traceback, not empty, not just 'Error'."""
    assert isinstance(message, str) and len(message.split()) >= 3, repr(message)
    assert not any(u in message for u in UNCLEAR), message


def test_corpus_has_at_least_200_inputs_across_every_endpoint():
    assert len(CASES) >= 200
    assert {c.api for c in CASES} == {"/generate", "/compare", "/place_prompt", "/tradeoff", "/presets"}
    assert {c.expect for c in CASES} == {"ok", "error"} and any(c.raw for c in CASES)


def test_every_input_ends_in_time_in_a_result_or_a_clear_error(fuzz_app, record_property):
    demo, client = fuzz_app
    url = demo.local_url.rstrip("/")
    names = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert {c.api for c in CASES} <= names
    failures, slowest, start = [], (0.0, ""), time.monotonic()
    for case in CASES:
        began = time.monotonic()
        try:
            outcome, payload = call(client, url, case)
            elapsed = time.monotonic() - began
            assert elapsed < CALL_LIMIT_S, f"took {elapsed:.1f} s"
            assert outcome == case.expect, f"expected {case.expect}, got {outcome}: {str(payload)[:300]}"
            if outcome == "ok":
                check_result(case.api, payload)
            else:
                check_message(payload)
        except (AssertionError, TimeoutError, httpx.HTTPError, KeyError, TypeError) as err:
            failures.append(f"{case.label}: {type(err).__name__}: {err}")
        slowest = max(slowest, (time.monotonic() - began, case.label))
    record_property("fuzz_inputs", len(CASES))
    print(f"fuzz: {len(CASES)} inputs in {time.monotonic() - start:.0f} s, slowest {slowest[0]:.1f} s ({slowest[1]})")
    assert not failures, f"{len(failures)} of {len(CASES)} inputs failed:\n" + "\n".join(failures[:40])
    _, _, trace = client.predict("Is the server still answering?", 2, False, 1.0, 1.0, 0, True, "soft", api_name="/generate")
    assert trace["finish_reason"] in FINISH_REASONS
    assert client.predict("Still placing prompts?", api_name="/place_prompt")["regimes"]
    assert httpx.get(f"{url}/config", timeout=10).status_code == 200
