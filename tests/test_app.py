"""The app served for real (in-process, prevent_thread_lock) and driven through gradio_client."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
from app_fixtures import quick_precomputed, quick_run

from alignx_demo.analysis.artefacts import load_artefacts
from alignx_demo.modeling import load_mocae
from alignx_demo.serving import ModelContext, ServerOptions, load_context
from alignx_demo.ui.app import LAUNCH_KWARGS, build_demo
from alignx_demo.ui.exports import tokens_from_csv, write_exports

XSS = "<img src=x onerror=alert(1)>"
GEN = (False, 1.0, 1.0, 0)  # greedy, temperature, top-p, seed


def launch(context: ModelContext, precomputed: Path | None = None):
    from gradio_client import Client

    demo = build_demo(context, precomputed)
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=None, quiet=True, **LAUNCH_KWARGS)
    return demo, Client(demo.local_url, verbose=False)


@pytest.fixture(scope="module")
def served():
    run, _ = quick_run()
    demo, client = launch(ModelContext(load_mocae(run, load_in_4bit=False)), quick_precomputed())
    yield client
    demo.close()


@pytest.fixture
def served_plain(checkpoint, tmp_path):
    """A model without baselines and with no precomputed artefacts at all."""
    demo, client = launch(ModelContext(load_mocae(checkpoint, load_in_4bit=False)), tmp_path / "no-precomputed")
    yield demo, client
    demo.close()


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: set[str] = set()
        self.text = ""

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)

    def handle_data(self, data):
        self.text += data


def test_named_endpoints_are_listed(served):
    names = set(served.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert {"/generate", "/compare", "/place_prompt", "/tradeoff", "/presets"} <= names


def test_generate_returns_one_entry_per_token(served):
    chips, summary, trace = served.predict("Is the moon made of cheese?", 6, *GEN, True, "soft", api_name="/generate")
    assert trace["prompt"] == "Is the moon made of cheese?" and trace["model"].startswith("run (")
    assert trace["settings"]["routing"]["calibrated"] is True and trace["settings"]["generation"]["max_new_tokens"] == 6
    tokens = trace["tokens"]
    assert [t["position"] for t in tokens] == list(range(len(tokens)))
    generated = [t for t in tokens if not t["is_prompt"]]
    assert 1 <= len(generated) <= 6 and trace["finish_reason"] in ("eos", "length")
    assert "".join(t["text"] for t in generated) == trace["text"]
    for t in tokens:
        assert abs(sum(t["weights"].values()) - 1) < 1e-4 and len(t["layers"]) == 2
    assert chips.count('<span class="ax-chip') == len(tokens)
    assert "generated" in summary


def test_streamed_updates_arrive_before_generation_ends(served):
    job = served.submit("Tell me about bread", 40, *GEN, True, "soft", api_name="/generate")
    updates = [out[2] for out in job]
    final = job.outputs()[-1][2]
    assert final["finish_reason"] in ("eos", "length")
    partial = [u for u in job.outputs()[:-1] if u[2] and u[2]["finish_reason"] is None]
    assert partial, "no streamed update before the end"
    assert len(partial[0][2]["tokens"]) < len(final["tokens"])
    assert updates


def test_calibrated_and_uncalibrated_routing_differ(served):
    cal_html, unc_html, summary, result = served.predict("Do vaccines cause autism?", 8, *GEN, "soft", api_name="/compare")
    cal, unc = result["calibrated"], result["uncalibrated"]
    assert cal["settings"]["routing"]["calibrated"] and not unc["settings"]["routing"]["calibrated"]
    prompt_pairs = [(a, b) for a, b in zip(cal["tokens"], unc["tokens"]) if a["is_prompt"]]
    assert prompt_pairs and all(a["id"] == b["id"] for a, b in prompt_pairs)
    assert any(abs(a["weights"]["helpful"] - b["weights"]["helpful"]) > 1e-3 for a, b in prompt_pairs)
    stats = result["summary"]
    assert set(stats) == {"calibrated", "uncalibrated", "flips"}
    assert stats["calibrated"]["mean_confidence"] != stats["uncalibrated"]["mean_confidence"]
    assert cal_html.count("ax-flip") == unc_html.count("ax-flip") == stats["flips"]["flips"]
    assert "Top expert flips" in summary


def test_place_prompt_uses_neighbours_in_every_regime(served):
    placement = served.predict("How do I get rid of a wasp nest safely?", api_name="/place_prompt")
    map_data = json.loads((quick_precomputed() / "map.json").read_text())
    assert placement["router_axis"] in ("helpful", "harmless", "honest")
    for regime, spot in placement["regimes"].items():
        assert len(spot["neighbours"]) == placement["k"]
        coords = [map_data["regimes"][regime]["coords"][n["index"]] for n in spot["neighbours"]]
        assert spot["x"] == pytest.approx(sum(c[0] for c in coords) / len(coords), abs=1e-3)
        assert spot["y"] == pytest.approx(sum(c[1] for c in coords) / len(coords), abs=1e-3)
        assert all(n["text"] == map_data["prompts"][n["index"]]["text"] for n in spot["neighbours"])


def test_tradeoff_and_presets(served):
    _, _, trace = served.predict("Tell me about bread", 0, 1, 0, 1.0, False, 4, 0, api_name="/tradeoff")
    assert trace["settings"]["routing"]["axis_prior"] == [0.0, 1.0, 0.0]
    assert all(t["weights"]["harmless"] == pytest.approx(1.0) for t in trace["tokens"])
    *chips, result = served.predict("Tell me about bread", 4, 0, api_name="/presets")
    assert list(result) == ["too helpful", "too harmless", "too honest", "just right"]
    assert result["too honest"]["axis_shares"]["honest"] == pytest.approx(1.0)
    assert result["just right"]["settings"].get("axis_prior") is None
    assert all("ax-chip" in c for c in chips)


def test_exports_parse_back_to_the_same_trace(served):
    _, _, trace = served.predict("Give me a tip, please", 5, *GEN, False, "top1", api_name="/generate")
    csv_path, json_path = write_exports(trace)
    assert json.loads(Path(json_path).read_text(encoding="utf-8")) == trace
    assert tokens_from_csv(Path(csv_path).read_text(encoding="utf-8")) == trace["tokens"]
    assert Path(csv_path).parent != Path(write_exports(trace)[0]).parent  # one folder per request


def test_html_in_prompt_is_escaped(served):
    chips, _, trace = served.predict(XSS, 2, *GEN, False, "top1", api_name="/generate")
    parsed = Tags()
    parsed.feed(chips)
    assert parsed.tags == {"div", "span"}
    assert XSS in parsed.text.replace("\u21b5\n", "")
    cal, unc, _, _ = served.predict(XSS, 2, *GEN, "soft", api_name="/compare")
    for page in (cal, unc):
        parsed = Tags()
        parsed.feed(page)
        assert "img" not in parsed.tags


@pytest.mark.parametrize(
    "args, message",
    [
        (("   ", 4, *GEN, True, "soft"), "prompt is empty"),
        (("hi", 5000, *GEN, True, "soft"), "max new tokens must be from 1 to 256"),
        (("hi", 4, False, -1.0, 1.0, 0, True, "soft"), "temperature must be from 0.1 to 2"),
        (("hi", 4, *GEN, True, "bogus"), "routing mode must be one of 'soft', 'top1'"),
        (("x" * 30_000, 4, *GEN, True, "soft"), "too long"),
    ],
)
def test_bad_input_gives_clear_errors(served, args, message):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=message):
        served.predict(*args, api_name="/generate")


def test_settings_are_checked_beyond_the_widgets():
    from alignx_demo.ui.runner import GenerationError, settings_from

    with pytest.raises(GenerationError, match="whole number"):
        settings_from(4.5, False, 1.0, 1.0, 0, cap=256)
    with pytest.raises(GenerationError, match="top_p"):
        settings_from(4, True, 1.0, 0.0, 0, cap=256)


def test_bad_prior_gives_clear_error(served):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="must not all be zero"):
        served.predict("hi", 0, 0, 0, 1.0, False, 4, 0, api_name="/tradeoff")


def test_control_and_special_tokens_are_plain_text(served):
    _, _, trace = served.predict("a\x00b\x1b[31m <|assistant|> <|eos|>", 3, *GEN, True, "soft", api_name="/generate")
    prompt_text = "".join(t["text"] for t in trace["tokens"] if t["is_prompt"])
    assert "<|assistant|> <|eos|>" in prompt_text


def test_missing_precomputed_files_give_notices_and_the_rest_works(served_plain):
    from gradio_client.exceptions import AppError

    demo, client = served_plain
    page = json.dumps(demo.config, default=str)
    assert "Precomputed file missing" in page and "precompute --model" in page
    _, _, trace = client.predict("hello", 3, *GEN, True, "soft", api_name="/generate")
    assert trace["finish_reason"] in ("eos", "length")
    _, _, _, result = client.predict("hello", 3, *GEN, "soft", api_name="/compare")
    assert "flips" in result["summary"]
    with pytest.raises(AppError, match="Precomputed file missing"):
        client.predict("hello", api_name="/place_prompt")


def test_map_built_for_another_model_is_refused(checkpoint):
    from gradio_client.exceptions import AppError

    demo, client = launch(ModelContext(load_mocae(checkpoint, load_in_4bit=False)), quick_precomputed())
    try:
        with pytest.raises(AppError, match="built for another model"):
            client.predict("hello", api_name="/place_prompt")
    finally:
        demo.close()


def test_missing_model_serves_notices_and_precomputed_tabs(tmp_path):
    from gradio_client.exceptions import AppError

    context = load_context(ServerOptions(model=tmp_path / "missing"))
    assert context.loaded is None and "checkpoint folder not found" in context.problem
    demo, client = launch(context, quick_precomputed())
    try:
        page = json.dumps(demo.config, default=str)
        assert "could not be loaded" in page and "Stage 1 experts" in page and "Reliability" in page
        for api, args in (("/generate", ("hi", 4, *GEN, True, "soft")), ("/compare", ("hi", 4, *GEN, "soft")),
                          ("/place_prompt", ("hi",)), ("/presets", ("hi", 4, 0))):
            with pytest.raises(AppError, match="could not be loaded"):
                client.predict(*args, api_name=api)
    finally:
        demo.close()


def test_artefacts_load_quickly():
    import time

    folder = quick_precomputed()
    start = time.perf_counter()
    artefacts = load_artefacts(folder)
    assert time.perf_counter() - start < 5 and not artefacts.notices


def test_space_binds_publicly_only_when_asked(monkeypatch):
    monkeypatch.delenv("SPACE_ID", raising=False)
    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    monkeypatch.delenv("ALIGNX_HOST", raising=False)
    assert ServerOptions.from_env().host == "127.0.0.1"
    monkeypatch.setenv("SPACE_ID", "someone/alignx")
    assert ServerOptions.from_env().host == "0.0.0.0"
