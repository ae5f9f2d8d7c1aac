"""The app served for real and driven through gradio_client."""

from __future__ import annotations

import pytest

from alignx_demo.modeling import load_mocae
from alignx_demo.serving import ModelContext, ServerOptions, load_context
from alignx_demo.ui.app import LAUNCH_KWARGS, build_demo


def launch(context: ModelContext):
    from gradio_client import Client

    demo = build_demo(context)
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=None, quiet=True, **LAUNCH_KWARGS)
    return demo, Client(demo.local_url, verbose=False)


@pytest.fixture
def served(checkpoint):
    demo, client = launch(ModelContext(load_mocae(checkpoint, load_in_4bit=False)))
    yield client
    demo.close()


def test_generate_endpoint_returns_full_trace(served):
    chips, summary, trace = served.predict(
        "Is the moon made of cheese?", 6, False, 1.0, 1.0, 0, True, "soft", api_name="/generate"
    )
    assert trace["prompt"] == "Is the moon made of cheese?"
    generated = [t for t in trace["tokens"] if not t["is_prompt"]]
    assert 1 <= len(generated) <= 6
    assert chips.count('<span class="ax-chip') == len(trace["tokens"])
    assert "tokens" in summary


def test_html_in_prompt_is_escaped(served):
    from html.parser import HTMLParser

    class Tags(HTMLParser):
        def __init__(self):
            super().__init__()
            self.tags, self.text = set(), ""

        def handle_starttag(self, tag, attrs):
            self.tags.add(tag)

        def handle_data(self, data):
            self.text += data

    chips, _, _ = served.predict("<img src=x onerror=alert(1)>", 2, False, 1.0, 1.0, 0, False, "top1", api_name="/generate")
    parsed = Tags()
    parsed.feed(chips)
    assert parsed.tags == {"div", "span"}
    assert "<img src=x onerror=alert(1)>" in parsed.text


def test_streaming_updates_arrive_before_the_end(served):
    job = served.submit("Tell me about bread", 40, False, 1.0, 1.0, 0, True, "soft", api_name="/generate")
    outputs = list(job)
    assert job.outputs()[-1][2]["finish_reason"] in ("eos", "length")
    assert len(job.outputs()) >= 1 and outputs


def test_empty_prompt_gives_clear_error(served):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="prompt is empty"):
        served.predict("   ", 4, False, 1.0, 1.0, 0, True, "soft", api_name="/generate")


def test_missing_model_serves_a_notice(tmp_path):
    from gradio_client.exceptions import AppError

    context = load_context(ServerOptions(model=tmp_path / "missing"))
    assert context.loaded is None and "checkpoint folder not found" in context.problem
    demo, client = launch(context)
    try:
        with pytest.raises(AppError, match="could not be loaded"):
            client.predict("hi", 4, False, 1.0, 1.0, 0, True, "soft", api_name="/generate")
    finally:
        demo.close()


def test_space_binds_publicly_only_when_asked(monkeypatch):
    monkeypatch.delenv("SPACE_ID", raising=False)
    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    assert ServerOptions.from_env().host == "127.0.0.1"
    monkeypatch.setenv("SPACE_ID", "someone/alignx")
    assert ServerOptions.from_env().host == "0.0.0.0"
