"""The operator's limits (queue size, concurrency, seconds per request, max new tokens, prompt length):
where they come from, that the app applies them, and that Stop or a visitor going away frees the model
at once. The model is slowed down (a sleep per forward) so that timing is about the limits, not the CPU."""

from __future__ import annotations

import json
import sys
import time

import httpx
import pytest
from gradio_client.exceptions import AppError
from gradio_client.utils import QueueError
from test_app import GEN, launch

from alignx_demo.config import GenerationSettings
from alignx_demo.generation import RoutedGeneration
from alignx_demo.modeling import load_mocae
from alignx_demo.serving import Limits, ModelContext
from alignx_demo.ui.app import build_demo

STEP_S = 0.05
"""Seconds each slowed forward pass sleeps: a 64-token generation takes over 3 s."""
API_NAMES = {"generate", "compare", "place_prompt", "tradeoff", "presets", "analyze", "attribute"}


def test_limits_come_from_the_environment_and_flags(monkeypatch, capsys):
    import app

    for variable, value in (("ALIGNX_QUEUE_SIZE", "5"), ("ALIGNX_CONCURRENCY", "3"), ("ALIGNX_REQUEST_SECONDS", "7.5"),
                            ("ALIGNX_MAX_NEW_TOKENS", "100"), ("ALIGNX_MAX_PROMPT_CHARS", "500")):
        monkeypatch.setenv(variable, value)
    monkeypatch.setattr(sys, "argv", ["app.py", "--concurrency", "4"])
    options, _ = app.parse_args()
    assert options.limits == Limits(queue_size=5, concurrency=4, request_seconds=7.5, max_new_tokens=100, max_prompt_chars=500)
    for argv, env, message in ((["app.py"], "soon", "ALIGNX_REQUEST_SECONDS must be a number, got 'soon'"),
                               (["app.py", "--queue-size", "0"], "7.5", "queue_size (--queue-size, ALIGNX_QUEUE_SIZE) must be")):
        monkeypatch.setenv("ALIGNX_REQUEST_SECONDS", env)
        monkeypatch.setattr(sys, "argv", argv)
        with pytest.raises(SystemExit) as exited:
            app.parse_args()
        assert exited.value.code == 2 and message in capsys.readouterr().err


def test_the_app_applies_the_limits():
    demo = build_demo(ModelContext(None, "no model", limits=Limits(queue_size=3, concurrency=1, max_new_tokens=10)))
    assert demo._queue.max_size == 3 and demo._queue.default_concurrency_limit == 1
    model_events = [fn for fn in demo.fns.values() if fn.api_name in API_NAMES]
    assert {fn.api_name for fn in model_events} == API_NAMES
    assert all(fn.concurrency_id == "model" and fn.concurrency_limit == "default" and not fn.preprocess for fn in model_events)
    sliders = [c for c in json.loads(json.dumps(demo.config, default=str))["components"] if c["props"].get("label") == "Max new tokens"]
    assert sorted(s["props"]["maximum"] for s in sliders) == [5, 5, 10]


def test_a_passed_deadline_stops_generation_with_a_notice(checkpoint):
    loaded = load_mocae(checkpoint, load_in_4bit=False)
    run = RoutedGeneration(loaded.mocae, loaded.tokenizer, "Tell me about bread.", GenerationSettings(max_new_tokens=8),
                           deadline=time.monotonic())
    tokens = list(run)
    assert run.finish_reason == "time_limit" and all(t.is_prompt for t in tokens)
    assert run.trace()["notices"] == ["generation stopped at the time limit after 0 new token(s)"]


@pytest.fixture
def slow_app(checkpoint, tmp_path):
    """Launch the tiny model under given limits with every forward pass slowed; yields a factory of
    (demo, client, forward calls so far)."""
    opened = []

    def start(limits: Limits):
        loaded = load_mocae(checkpoint, load_in_4bit=False)
        forward, calls = loaded.mocae.model.forward, []

        def slow(*args, **kwargs):
            calls.append(time.monotonic())
            time.sleep(STEP_S)
            return forward(*args, **kwargs)

        loaded.mocae.model.forward = slow
        demo, client = launch(ModelContext(loaded, limits=limits), tmp_path / "no-precomputed")
        opened.append(demo)
        return demo, client, calls

    yield start
    for demo in opened:
        demo.close()


def test_the_time_limit_stops_a_request(slow_app):
    _, client, _ = slow_app(Limits(request_seconds=0.6))
    start = time.monotonic()
    _, summary, trace = client.predict("Tell me a long story.", 64, *GEN, True, "soft", api_name="/generate")
    assert time.monotonic() - start < 10.0  # a hang guard; the finish reason and token count below are the proof
    generated = [t for t in trace["tokens"] if not t["is_prompt"]]
    assert trace["finish_reason"] == "time_limit" and 0 < len(generated) < 40
    assert any("time limit" in n for n in trace["notices"]) and "finish: time_limit" in summary
    start = time.monotonic()
    *_, result = client.predict("Tell me a long story.", 32, *GEN, "soft", api_name="/compare")  # both runs share the budget
    assert time.monotonic() - start < 10.0
    assert result["calibrated"]["finish_reason"] == result["uncalibrated"]["finish_reason"] == "time_limit"


def test_queue_size_and_concurrency_are_enforced(slow_app):
    _, client, _ = slow_app(Limits(queue_size=1, concurrency=1, request_seconds=1.0))
    running = client.submit("first", 64, *GEN, True, "soft", api_name="/generate")
    deadline = time.monotonic() + 30
    while not running.outputs() and time.monotonic() < deadline:
        time.sleep(0.02)
    waiting = client.submit("second", 64, *GEN, True, "soft", api_name="/generate")
    time.sleep(0.3)
    with pytest.raises((QueueError, AppError), match="[Qq]ueue is full"):
        client.submit("third", 2, *GEN, True, "soft", api_name="/generate").result(timeout=30)
    first = running.result(timeout=30)[2]
    first_done = time.monotonic()
    second = waiting.result(timeout=30)[2]
    assert first["finish_reason"] == second["finish_reason"] == "time_limit" and second["prompt"] == "second"
    assert time.monotonic() - first_done > 0.5  # the second generated only after the first ended: one at a time


def _settles(calls: list[float], within: float) -> int:
    """Wait until no forward pass has started for `within` seconds (or 10 s pass); the number of passes."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and calls and time.monotonic() - calls[-1] < within:
        time.sleep(0.05)
    return len(calls)


def test_stop_frees_the_model_at_once(slow_app):
    _, client, calls = slow_app(Limits())
    job = client.submit("Tell me a long story.", 64, *GEN, True, "soft", api_name="/generate")
    deadline = time.monotonic() + 30
    while not job.outputs() and time.monotonic() < deadline:
        time.sleep(0.02)
    stopped_at = len(calls)
    job.cancel()
    settled = _settles(calls, within=0.5)
    assert settled - stopped_at <= 4 and settled < 40, f"{settled - stopped_at} forward passes after Stop"
    start = time.monotonic()
    _, _, trace = client.predict("next visitor", 2, *GEN, True, "soft", api_name="/generate")
    assert trace["prompt"] == "next visitor" and time.monotonic() - start < 3.0


def test_a_visitor_going_away_frees_the_model_at_once(slow_app):
    demo, client, calls = slow_app(Limits())
    url = demo.local_url.rstrip("/")
    body = json.dumps({"data": ["Tell me a long story.", 64, *GEN, True, "soft"]})
    with httpx.Client(timeout=30) as http:
        event_id = http.post(f"{url}/gradio_api/call/generate", content=body, headers={"content-type": "application/json"}).json()["event_id"]
        with http.stream("GET", f"{url}/gradio_api/call/generate/{event_id}") as stream:
            for line in stream.iter_lines():
                if line.startswith("event: generating"):
                    break
            left_at = len(calls)
    settled = _settles(calls, within=0.5)
    assert settled - left_at <= 4 and settled < 40, f"{settled - left_at} forward passes after the visitor left"
    _, _, trace = client.predict("next visitor", 2, *GEN, True, "soft", api_name="/generate")
    assert trace["prompt"] == "next visitor"
