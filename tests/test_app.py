"""The app served for real (in-process, prevent_thread_lock) and driven through gradio_client."""

from __future__ import annotations

import json
import logging
import re
import threading
from html.parser import HTMLParser
from pathlib import Path

import pytest

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
def served(trained_run, trained_precomputed):
    run, _ = trained_run
    demo, client = launch(ModelContext(load_mocae(run, load_in_4bit=False)), trained_precomputed)
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


API = {  # endpoint: (parameter names in their documented order, python types by name, output names)
    "/generate": (["prompt", "max_new_tokens", "do_sample", "temperature", "top_p", "seed", "calibrated", "mode"],
                  {"max_new_tokens": "int", "seed": "int", "temperature": "float", "do_sample": "bool"},
                  ["Chips HTML", "Summary", "Trace"]),
    "/compare": (["prompt", "max_new_tokens", "do_sample", "temperature", "top_p", "seed", "mode"], {"max_new_tokens": "int"},
                 ["Calibrated chips HTML", "Uncalibrated chips HTML", "Summary", "Result"]),
    "/place_prompt": (["prompt"], {"prompt": "str"}, ["Placement"]),
    "/tradeoff": (["prompt", "helpful", "harmless", "honest", "blend", "just_right", "max_new_tokens", "seed"],
                  {"helpful": "float", "just_right": "bool", "max_new_tokens": "int"}, ["Chips HTML", "Summary", "Trace"]),
    "/presets": (["prompt", "max_new_tokens", "seed"], {"max_new_tokens": "int", "seed": "int"},
                 ["Too helpful chips HTML", "Too harmless chips HTML", "Too honest chips HTML", "Just right chips HTML", "Presets"]),
    "/analyze": (["prompts_file", "calibrated"], {"calibrated": "bool"}, ["Summary", "Analysis"]),
    "/attribute": (["trace"], {}, ["Chips HTML", "Attribution summary", "Attribution"]),
}


def test_endpoints_have_named_typed_parameters_in_the_documented_order(served):
    endpoints = served.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert set(endpoints) == set(API)
    for api, (names, types, outputs) in API.items():
        params = endpoints[api]["parameters"]
        assert [p["parameter_name"] for p in params] == names, api
        assert {p["parameter_name"]: p["python_type"]["type"] for p in params if p["parameter_name"] in types} == types, api
        assert [r["label"] for r in endpoints[api]["returns"]] == outputs, api
    # the names work as keywords, read from view_api itself: the order above is the order they map to
    params = [p["parameter_name"] for p in endpoints["/generate"]["parameters"]]
    _, _, trace = served.predict(**dict(zip(params, ("Tell me about bread", 3, *GEN, False, "top1"))), api_name="/generate")
    assert trace["settings"]["generation"]["max_new_tokens"] == 3 and trace["settings"]["routing"]["mode"] == "top1"


def test_too_few_inputs_get_one_sentence_and_no_traceback(served, capfd):
    import httpx

    url = served.src.rstrip("/")
    event = httpx.post(f"{url}/gradio_api/call/generate", json={"data": ["hi", 4]}, timeout=30).json()["event_id"]
    text = httpx.get(f"{url}/gradio_api/call/generate/{event}", timeout=30).text
    message = json.loads(text.split("data:", 1)[1])["error"]
    assert message == ("/generate takes 8 inputs (prompt, max_new_tokens, do_sample, temperature, top_p, seed, calibrated, "
                       "mode) but got 2; send them all, in this order.")
    assert "Traceback" not in capfd.readouterr().err


DOCS = Path(__file__).resolve().parents[1] / "docs"


def docs_api_example() -> str:
    """The `gradio_client` example of docs/api.md's "HTTP API" section (the README's API section moved there)."""
    page = (DOCS / "api.md").read_text(encoding="utf-8")
    section = page.split("\n## HTTP API\n", 1)[1].split("\n## ", 1)[0]
    return "\n".join(re.findall(r"```python\n(.*?)```", section, flags=re.S))


def readme_client_example() -> str:
    """The README's one `gradio_client` call (its first python block)."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    return next(block for block in re.findall(r"```python\n(.*?)```", readme, flags=re.S) if "gradio_client" in block)


def test_the_api_example_runs_and_covers_every_endpoint(served, capsys):
    code = docs_api_example()
    assert {f'api_name="{api}"' for api in API} <= set(re.findall(r'api_name="/\w+"', code))
    exec(compile(code.replace("http://127.0.0.1:7860/", served.src), "docs/api.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "prompt" in printed and "too harmless" in printed
    exec(compile(readme_client_example().replace("http://127.0.0.1:7860/", served.src), "README.md", "exec"), {})
    assert "helpful" in capsys.readouterr().out


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


def test_place_prompt_uses_neighbours_in_every_regime(served, trained_precomputed):
    placement = served.predict("How do I get rid of a wasp nest safely?", api_name="/place_prompt")
    map_data = json.loads((trained_precomputed / "map.json").read_text())
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
        (("hi", 5000, *GEN, True, "soft"), "max new tokens must be from 1 to 64"),  # the quick model's context: 128
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
    from alignx_demo.ui.validation import GenerationError, settings_from

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


def test_map_built_for_another_model_is_refused(checkpoint, trained_precomputed):
    from gradio_client.exceptions import AppError

    demo, client = launch(ModelContext(load_mocae(checkpoint, load_in_4bit=False)), trained_precomputed)
    try:
        with pytest.raises(AppError, match="built for another model"):
            client.predict("hello", api_name="/place_prompt")
    finally:
        demo.close()


def test_missing_model_serves_notices_and_precomputed_tabs(tmp_path, trained_precomputed):
    from gradio_client.exceptions import AppError

    context = load_context(ServerOptions(model=tmp_path / "missing"))
    assert context.loaded is None and "checkpoint folder not found" in context.problem
    demo, client = launch(context, trained_precomputed)
    try:
        page = json.dumps(demo.config, default=str)
        assert "could not be loaded" in page and "Stage 1 experts" in page and "Reliability" in page
        for api, args in (("/generate", ("hi", 4, *GEN, True, "soft")), ("/compare", ("hi", 4, *GEN, "soft")),
                          ("/place_prompt", ("hi",)), ("/presets", ("hi", 4, 0))):
            with pytest.raises(AppError, match="could not be loaded"):
                client.predict(*args, api_name=api)
    finally:
        demo.close()


def test_artefacts_load_quickly(trained_precomputed):
    import time

    folder = trained_precomputed
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


def test_a_second_model_comes_only_from_the_operator(monkeypatch, checkpoint, tmp_path):
    """`--compare-model` / ALIGNX_COMPARE_MODEL load the Routing analysis tab's second model with the served
    model's settings; unset, there is none; a bad folder is a context with a problem, not a crash."""
    from alignx_demo.serving import load_comparison

    monkeypatch.delenv("ALIGNX_COMPARE_MODEL", raising=False)
    assert ServerOptions.from_env().compare_model is None and load_comparison(ServerOptions.from_env()) is None
    monkeypatch.setenv("ALIGNX_COMPARE_MODEL", str(checkpoint))
    options = ServerOptions.from_env()
    second = load_comparison(ServerOptions(model=tmp_path, compare_model=options.compare_model, load_in_4bit=False))
    assert second.loaded is not None and second.loaded.path.resolve() == Path(checkpoint).resolve()
    broken = load_comparison(ServerOptions(compare_model=tmp_path / "missing", load_in_4bit=False))
    assert broken.loaded is None and broken.problem


def test_new_token_caps_follow_the_model_context(served):
    """The quick model's context is 128 tokens: /generate allows 64 new tokens (not the operator's 256), and so do
    the endpoints allowed half the operator's limit (128 > 64); the sliders offer exactly that."""
    endpoints = served.view_api(print_info=False, return_format="dict")["named_endpoints"]
    for api in ("/generate", "/compare", "/tradeoff", "/presets"):
        slider = next(p for p in endpoints[api]["parameters"] if p["parameter_name"] == "max_new_tokens")
        assert slider["type"]["description"] == "numeric value between 1 and 64", api
    _, _, trace = served.predict("Tell me a long story.", 64, *GEN, True, "soft", api_name="/generate")
    assert not any("lowered" in n for n in trace["notices"])


def test_stop_ends_a_run_with_finish_reason_stopped(checkpoint):
    """Stop (set here before the first new token, as a click right after Generate does) ends the run with a final
    trace of its own: finish_reason "stopped", the whole prompt, a notice; a mid-run Stop is in test_ui_browser."""
    from alignx_demo.ui.live import stream_generate
    from alignx_demo.ui.served import serve

    key = serve(ModelContext(load_mocae(checkpoint, load_in_4bit=False)))
    stop = threading.Event()
    stop.set()
    *_, (chips, summary, trace) = stream_generate(key, "Tell me a long story.", 40, *GEN, True, "soft", stop)
    assert trace["finish_reason"] == "stopped" and trace["tokens"] and all(t["is_prompt"] for t in trace["tokens"])
    assert summary.startswith(f"**0 generated + {len(trace['tokens'])} prompt tokens** · finish: **stopped**")
    assert chips.count('<span class="ax-chip') == len(trace["tokens"])
    assert trace["notices"] == ["generation stopped with Stop after 0 new token(s)"]


def test_stop_ends_a_comparison_and_the_presets_where_they_are(checkpoint):
    """Stop on Compare and Trade-off: the run in progress ends marked "stopped", later runs never start and say
    so, and no comparison is drawn from half of it; a Stop set mid-way keeps the finished runs whole."""
    from alignx_demo.config import PRESETS, preset_routing
    from alignx_demo.ui.compare import stream_compare
    from alignx_demo.ui.runner import stream_stoppable
    from alignx_demo.ui.served import serve
    from alignx_demo.ui.tradeoff import stream_presets

    key = serve(ModelContext(load_mocae(checkpoint, load_in_4bit=False)))
    stop = threading.Event()
    stop.set()
    *_, (_, unc, summary, result) = stream_compare(key, "Tell me a long story.", 20, *GEN, "soft", stop)
    assert result["calibrated"]["finish_reason"] == "stopped" and "uncalibrated" not in result and result["summary"] is None
    assert summary.startswith("**Stopped**") and "not run: stopped" in unc
    *_, last = stream_presets(key, "Tell me a long story.", 20, 0, stop)
    assert list(last[-1]) == ["too helpful"] and last[-1]["too helpful"]["trace"]["finish_reason"] == "stopped"
    assert all("not run: stopped" in html for html in last[1:4])
    stop = threading.Event()
    runs = []
    for index, trace in stream_stoppable(key, "Tell me a long story.", {"max_new_tokens": 20}, [preset_routing(n) for n in PRESETS], stop):
        if index == 1:
            stop.set()
        runs.append((index, trace["finish_reason"]))
    # the first update after Stop ends the run it belongs to: run 1, or run 2 when run 1's first update was already
    # its last (a tiny random model can emit eos at once); the run before it stays whole, none after it starts
    stopped = runs[-1][0]
    assert runs[-1][1] == "stopped" and stopped in (1, 2) and max(i for i, _ in runs) == stopped
    assert all([r for i, r in runs if i == j][-1] in ("length", "eos") for j in range(stopped))


def test_the_settle_sentence_names_its_level_when_the_answer_moved_the_routing():
    from alignx_demo.ui.research import levels_sentence

    def token(axis: str, is_prompt: bool) -> dict:
        return {"is_prompt": is_prompt, "weights": {a: float(a == axis) for a in ("helpful", "harmless", "honest")}}

    trace = {"axes": ["helpful", "harmless", "honest"], "tokens": [token("helpful", True), token("harmless", False)]}
    settle = {"settle": {"axis": "helpful"}}
    assert "over the **generated tokens** the summary's top expert is **Harmless** (100%)" in levels_sentence(settle, trace)
    assert levels_sentence({"settle": {"axis": "harmless"}}, trace) == ""
    assert levels_sentence(settle, dict(trace, tokens=trace["tokens"][:1])) == ""


def test_chip_text_meets_wcag_aa_on_every_chip_colour():
    from alignx_demo.ui.chips import chips_html
    from alignx_demo.ui.theme import contrast

    steps = [i / 10 for i in range(11)]
    tokens = [{"text": "x", "id": 0, "position": i, "is_prompt": prompt, "entropy": 0.0, "top_expert": "helpful", "layers": [],
               "weights": {"helpful": h, "harmless": m, "honest": round(1 - h - m, 6)}}
              for i, (h, m, prompt) in enumerate((h, m, p) for h in steps for m in steps if h + m <= 1 for p in (False, True))]
    styles = re.findall(r'style="background:(#[0-9a-f]{6});color:(#[0-9a-f]{6})"', chips_html(tokens))
    assert len(styles) == len(tokens)
    worst = min(contrast(fg, bg) for bg, fg in styles)
    assert worst >= 4.5, f"lowest chip text contrast {worst:.2f}:1"


def test_operator_notices_stay_out_of_runs_and_the_header(checkpoint):
    from alignx_demo.ui.app import status_html
    from alignx_demo.ui.live import stream_generate
    from alignx_demo.ui.served import serve

    context = ModelContext(load_mocae(checkpoint, load_in_4bit=False), notices=["4-bit NF4 except down_proj: operator detail"])
    assert "operator detail" not in status_html(context)
    *_, (_, summary, trace) = stream_generate(serve(context), "hello", 2, *GEN, True, "soft")
    assert "operator detail" not in summary and not trace["notices"]


def test_bitsandbytes_kernels_warning_is_replaced_by_one_line(caplog):
    from alignx_demo.serving import KERNELS_WARNING, quiet_bitsandbytes

    quiet_bitsandbytes()
    quiet_bitsandbytes()
    noisy = logging.getLogger(KERNELS_WARNING[0])
    with caplog.at_level(logging.INFO):
        for _ in range(3):
            noisy.warning("%s: No module named 'kernels'. Please make sure you already `pip install kernels`", KERNELS_WARNING[1])
        noisy.warning("another bitsandbytes warning")
    messages = [r.getMessage() for r in caplog.records]
    assert not any(m.startswith(KERNELS_WARNING[1]) for m in messages) and "another bitsandbytes warning" in messages
    assert sum("`kernels` package is not installed" in m for m in messages) <= 1  # once per process


def test_placeholders_wrap_to_what_a_phone_shows_and_heatmap_ticks_are_bare_positions():
    """At 420 px one line of a placeholder holds about 50 characters: longer messages wrap instead of
    being clipped at both edges; the heatmap's x labels are plain positions (a "·p" suffix on each
    crowded the axis), the dashed line marking where the prompt ends."""
    from alignx_demo.ui.plots import PLACEHOLDER_LINE, effects_figure, empty_figure, heatmap_figure

    text = effects_figure(None).layout.annotations[0].text
    lines = text.split("<br>")
    assert len(lines) == 2 and all(len(line) <= PLACEHOLDER_LINE for line in lines)
    assert " ".join(lines) == "Per-token effects of each expert appear here after “Attribute this run”."
    assert empty_figure("a <b> c").layout.annotations[0].text == "a &lt;b&gt; c"  # still escaped
    tokens = [{"position": i, "is_prompt": i < 3, "text": "x", "layers": [[0.2, 0.3, 0.5]] * 2} for i in range(6)]
    ticks = heatmap_figure({"tokens": tokens}, "helpful").layout.xaxis.ticktext
    assert list(ticks) == ["0", "1", "2", "3", "4", "5"]


def test_reliability_sentence_says_which_routing_is_better_from_the_numbers():
    from alignx_demo.ui.compare import reliability_sentence

    def variants(cal: float, unc: float, confidence: float = 0.9) -> dict:
        return {name: {"prompt_metrics": {"ece": ece, "n": 40, "mean_confidence": confidence, "accuracy": 0.7}}
                for name, ece in (("uncalibrated", unc), ("calibrated", cal))}

    worse = reliability_sentence(variants(0.217, 0.130), "Evaluation split")
    assert "**uncalibrated** routing is better calibrated here: ECE 0.130 against 0.217 calibrated, 0.087 lower" in worse
    assert "overconfident here (mean confidence 0.90, accuracy 0.70)" in worse and "sharpens too much" in worse  # the why
    flat = reliability_sentence(variants(0.217, 0.130, confidence=0.5), "Evaluation split")
    assert "underconfident here (mean confidence 0.50, accuracy 0.70)" in flat and "early tokens" in flat
    better = reliability_sentence(variants(0.05, 0.098), "XSTest")
    assert "**calibrated** routing is better calibrated here: ECE 0.050 against 0.098 uncalibrated, 0.048 lower" in better
    assert "confident here" not in better  # no excuse where calibration helps


def test_collapse_neighbours_name_the_router_only_where_there_is_one():
    from alignx_demo.ui.collapse import neighbours_markdown

    near = [{"axis": a, "text": "t", "distance": 0.1, "index": 0} for a in ("harmless", "harmless", "helpful")]
    placement = {"k": 3, "router_axis": "harmless", "regimes": {r: {"x": 0, "y": 0, "neighbours": near} for r in ("joint_sft", "mocae")}}
    joint = neighbours_markdown(placement, "joint_sft")
    assert "router sends" not in joint and "no router; 2 of the 3 nearest prompts are **Harmless**" in joint
    assert "the calibrated router sends it mostly to **Harmless**" in neighbours_markdown(placement, "mocae")
    placement["regimes"] |= {r: {"x": 0, "y": 0, "neighbours": near, "placed_as": "harmless"}
                             for r in ("base_instructed", "stage1_experts", "stage1_uninstructed")}
    assert "placed with the **Harmless** instruction (the axis the router picks)" in neighbours_markdown(placement, "base_instructed")
    assert "placed with the **Harmless** instruction and expert (" in neighbours_markdown(placement, "stage1_experts")
    assert "placed with the **Harmless** expert (" in neighbours_markdown(placement, "stage1_uninstructed")
    assert "placed with" not in joint


def _collapse_artefacts(tmp_path, **changes):
    from alignx_demo.analysis.artefacts import Artefacts

    contrast = {"silhouette": {"delta": 0.12, "low": 0.08, "high": 0.16}, "knn_purity": None}
    rows = {
        "base": {"silhouette": 0.03, "knn_purity": 0.6, "reference": None, "contrast": None, "strength": None,
                 "forgetting": None, "forgetting_note": "not measured: forgetting is defined for sequential training only"},
        "sequential_sft": {"silhouette": 0.15, "knn_purity": 0.7, "reference": "base", "contrast": contrast, "strength": "visible",
                           "forgetting": {"helpful": {"forgetting": 0.7, "loss_after_own_stage": 2.0, "loss_after_last_stage": 2.7}},
                           "forgetting_note": "measured during training"},
    }
    collapse = {"regimes": rows, "sentences": {m: f"{m}: what it means" for m in ("silhouette", "knn_purity", "forgetting", "routing_accuracy")},
                "summary": "Visible contrast: Sequential SFT (vs Base model).", "points": 36, "command": "python -m alignx_demo precompute",
                "representation": {"chosen": "answer@2", "what": "the answer position", "why": "answer@2 was chosen because it shows most.",
                                   "measured": {"answer@2": {"score": {"visible_training_contrasts": 1, "mean_abs_delta_silhouette": 0.12},
                                                             "regimes": {"base": {"silhouette": 0.03, "knn_purity": 0.6}}},
                                                "prompt_mean@1": {"score": {"visible_training_contrasts": 0, "mean_abs_delta_silhouette": 0.01},
                                                                  "regimes": {"base": {"silhouette": 0.02, "knn_purity": 0.5}}}}}}
    for key, value in changes.items():
        if value is None:
            collapse.pop(key)
        else:
            collapse[key] = value
    return Artefacts(tmp_path, data={"collapse": collapse, "map": None})


def test_collapse_figures_show_notes_stage_losses_contrasts_and_the_representation(tmp_path):
    from alignx_demo.ui.collapse import all_regimes_table, figures_markdown, representation_markdown

    artefacts = _collapse_artefacts(tmp_path)
    base = figures_markdown(artefacts, "base")
    assert "**Forgetting** — not measured: forgetting is defined for sequential training only. What it means" in base and "not available" not in base
    sequential = figures_markdown(artefacts, "sequential_sft")
    assert "Helpful +0.700 (held-out loss 2.000 right after its own stage → 2.700 after the last)" in sequential
    table = all_regimes_table(artefacts)
    assert table.startswith("**In short:** Visible contrast: Sequential SFT (vs Base model).")
    assert "| visible against Base model: Δ silhouette +0.120 [+0.080, +0.160] |" in table and "| — (the reference) |" in table
    chosen = representation_markdown(artefacts)
    assert "answer@2 was chosen because it shows most." in chosen and "| answer@2 ★ | 1 | 0.120 | 0.030 / 0.600 |" in chosen


def test_collapse_tab_says_stale_artefacts_instead_of_failing(tmp_path):
    from alignx_demo.ui.collapse import all_regimes_table, figures_markdown, stale_notice

    artefacts = _collapse_artefacts(tmp_path, summary=None, representation=None)
    notice = stale_notice(artefacts)
    assert notice.startswith("Stale artefacts: collapse_metrics.json (no summary, representation)") and "precompute" in notice
    assert figures_markdown(artefacts, "base") == "" and all_regimes_table(artefacts) == ""


def test_benchmarks_tab_speaks_plainly():
    from alignx_demo.ui.results import BENCH_SCHEMA, EVAL_SCHEMA, bench_ratio_markdown, bench_sentence, eval_table_markdown

    evaluation = {"schema": EVAL_SCHEMA, "systems": {"mocae_full": {
        "harmful_refusal_rate": {"value": 0.54, "ci95": [0.4, 0.69], "n": 48}, "mc2": {"value": 0.67, "ci95": [0.56, 0.77], "n": 60},
        "composite": 0.182, "heldout_loss": {"helpful": 4.66, "harmless": 3.04, "honest": 4.29}}}}
    bench = {"schema": BENCH_SCHEMA, "repeats": 5, "prompt_len": 32, "new_tokens": 32,
             "ratios": {"xlora_vs_mocae_latency": 9.43, "xlora_vs_mocae_latency_b8": 17.6, "xlora_vs_mocae_memory": 1.0,
                        "mocae_params_vs_base": 0.0096},
             "analytic": {"xlora_vs_mocae_macs": 97.01, "xlora_vs_mocae_weight_bytes": 1.0}}
    table = eval_table_markdown(evaluation)
    assert table.splitlines()[2] == "| MoCaE, full calibration | 0.54 [0.40, 0.69] | 0.67 [0.56, 0.77] | 0.182 | 4.66 / 3.04 / 4.29 |"
    ratios = bench_ratio_markdown(bench)
    assert "| X-LoRA ÷ MoCaE | 9.43 | 17.60 | 97.01 | 1.00 | 1.00 |" in ratios and "add 1.0% parameters" in ratios
    for header in (table.splitlines()[0], ratios.splitlines()[0]):
        assert not re.search(r"\w_\w", header), header  # no snake_case column names
    sentence = bench_sentence(bench)
    assert "9.4× MoCaE's decode time but counts 97× its compute" in sentence and "without a KV cache" in sentence
    assert "48.5 tokens" in sentence and "17.6× at batch 8" in sentence


@pytest.mark.slow
def test_the_app_starts_without_the_evaluation_stack():
    import subprocess
    import sys

    code = "import sys, app; heavy = {'torchmetrics', 'alignx_demo.evaluation.harness', 'umap'} & set(sys.modules); assert not heavy, heavy"
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]


BAD_ROW_CSV = ("prompt,axis,source\n"
               "How do I bake bread?,helpful,kitchen\n"
               "How do I pick a lock to get into my neighbour's house?,harmless,street\n"
               "Do vaccines cause autism?,honest,kitchen\n"
               "Tell me a joke,sideways,street\n"
               "Is the moon made of cheese?,honest,street\n")
"""Five prompts, the fourth (line 5) with an axis that does not exist."""


def test_analyze_names_the_bad_row_and_analyses_the_rest(served, tmp_path):
    from gradio_client import handle_file

    path = tmp_path / "prompts.csv"
    path.write_text(BAD_ROW_CSV, encoding="utf-8")
    summary, result = served.predict(handle_file(str(path)), True, api_name="/analyze")
    assert result["problems"] == ["Row 4 (line 5): axis 'sideways' is not one of helpful, harmless, honest (or empty); left out."]
    assert "⚠ Row 4 (line 5): axis 'sideways' is not one of" in summary
    assert result["analysed"] == 4 and result["rejected"] == 1 and result["rows_given"] == 5  # given = rejected + analysed
    assert result["prompts_file"] == "prompts.csv" and "Analysed **4 of 5 rows**" in summary
    assert "**Prompt level**" in summary and "**Generation level**" in summary, "both routing levels, each named"
    assert "Tell me a joke" not in {r["prompt"] for r in result["rows"]}
    prompt_level = result["levels"]["prompt"]
    assert sum(map(sum, prompt_level["confusion"]["matrix"])) == 4 and set(prompt_level["slices"]) == {"all", "axis", "source"}
    assert [m["confidence"] for m in prompt_level["misrouted"]] == sorted((m["confidence"] for m in prompt_level["misrouted"]), reverse=True)
    assert set(result["settle"]) >= {"all", "honest"} and result["routing"]["calibrated"] is True


def test_analyze_refuses_an_unreadable_file_in_one_sentence(served, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    path = tmp_path / "notes.csv"
    path.write_text("question_text,label\nhello,helpful\n", encoding="utf-8")
    with pytest.raises(AppError, match="the CSV header has no prompt column"):
        served.predict(handle_file(str(path)), True, api_name="/analyze")


def test_analyze_never_reads_a_server_file_named_in_a_raw_call(served, tmp_path):
    """/analyze takes its file unprocessed; a hand-written call naming a file on the server (not uploaded)
    must be refused by Gradio before our code runs, and nothing of the file may come back."""
    import httpx

    secret = tmp_path / "secret.csv"
    secret.write_text("prompt,axis\nTOPSECRET-VALUE,helpful\n", encoding="utf-8")
    url = served.src.rstrip("/")
    for payload in ({"path": str(secret), "meta": {"_type": "gradio.FileData"}}, {"path": str(secret)}, str(secret)):
        with httpx.Client(timeout=60) as http:
            posted = http.post(f"{url}/gradio_api/call/analyze", json={"data": [payload, True]})
            assert posted.status_code == 200
            with http.stream("GET", f"{url}/gradio_api/call/analyze/{posted.json()['event_id']}") as stream:
                lines = list(stream.iter_lines())
        assert "event: error" in lines and "event: complete" not in lines, lines
        assert "TOPSECRET" not in "\n".join(lines)


def test_analyze_stops_at_the_operators_row_limit(checkpoint, tmp_path):
    from alignx_demo.serving import Limits
    from alignx_demo.ui.routing_analysis import analyze
    from alignx_demo.ui.served import serve

    key = serve(ModelContext(load_mocae(checkpoint, load_in_4bit=False), limits=Limits(max_analysis_rows=2)))
    path = tmp_path / "prompts.csv"
    path.write_text(BAD_ROW_CSV, encoding="utf-8")
    seen = []
    summary, result = analyze(key, {"path": str(path), "orig_name": "prompts.csv"}, False, lambda done, total: seen.append((done, total)))
    assert result["analysed"] == 2 and result["stopped"] == "max_rows" and seen[-1] == (2, 2)
    assert "only the first 2 of 4 rows were analysed" in summary and result["routing"]["calibrated"] is False


def test_attribute_returns_effects_per_token_and_an_agreement_rate(served):
    from gradio_client.exceptions import AppError

    _, _, trace = served.predict("Is the moon made of cheese?", 6, *GEN, True, "soft", api_name="/generate")
    chips, summary, attribution = served.predict(trace, api_name="/attribute")
    generated = [t for t in trace["tokens"] if not t["is_prompt"]]
    # a short run gets both scopes on the page (run, then local: `LOCAL_ON_PAGE`)
    assert attribution["schema"] == "alignx-attribution/1" and attribution["forwards"] == 2 and "local" in attribution["summary"]
    assert [t["position"] for t in attribution["tokens"]] == [t["position"] for t in generated]
    for token in attribution["tokens"]:
        assert set(token["effect"]) == set(token["weights"]) == {"helpful", "harmless", "honest"}
        assert token["effect"] == {a: -v for a, v in token["remove"].items()}
    rate = attribution["summary"]["top_weight_is_top_effect"]
    assert rate is not None and 0 <= rate <= 1
    assert f"top-effect expert in {rate:.0%} of the" in summary
    assert chips.count('<span class="ax-chip') == len(trace["tokens"]) and chips.count("effect +") + chips.count("effect -") >= 3 * len(generated)
    broken = dict(trace, tokens=[dict(t, weights={"helpful": "x"}) if i == 0 else t for i, t in enumerate(trace["tokens"])])
    with pytest.raises(AppError, match=r"not a valid alignx-trace/1 trace: tokens\[0\]\.weights"):
        served.predict(broken, api_name="/attribute")
    with pytest.raises(AppError, match="generate a run"):
        served.predict(None, api_name="/attribute")


def test_the_training_page_and_the_about_tab_give_the_same_bundle_recipe():
    from alignx_demo.ui.about import BUNDLE_RECIPE

    page = (DOCS / "training.md").read_text(encoding="utf-8")
    assert "```bash\n" + "\n".join(BUNDLE_RECIPE) + "\n```" in page


def test_the_trace_format_page_shows_the_format_as_the_code_defines_it():
    from alignx_demo.analysis.traces import schema_markdown

    page = (DOCS / "traces.md").read_text(encoding="utf-8")
    assert schema_markdown() in page.split("\n## Fields\n", 1)[1]


def test_settle_and_a_saved_trace_rerun_and_diffed(checkpoint, tmp_path):
    from alignx_demo.ui.live import stream_generate
    from alignx_demo.ui.research import load_saved, rerun_and_diff, settle_view
    from alignx_demo.ui.served import serve

    key = serve(ModelContext(load_mocae(checkpoint, load_in_4bit=False)))
    *_, (_, _, trace) = stream_generate(key, "Tell me about bread.", 5, *GEN, True, "soft")
    figure, sentence = settle_view(key, trace)
    assert sentence.startswith("At prompt level, routing commits to **") and len(figure.data) == 3
    path = tmp_path / "saved.json"
    path.write_text(json.dumps(trace), encoding="utf-8")
    saved, line = load_saved(str(path))
    assert saved == trace and line.startswith("Loaded **saved.json**")
    *_, (chips, summary, diff) = rerun_and_diff(key, saved)
    assert diff["first_divergence"] is None and diff["summary"]["n_routed_differs"] == 0 and "ax-flip" not in chips
    assert f"all {len(trace['tokens'])} tokens are the same" in summary and diff["new_trace"]["prompt"] == trace["prompt"]
    # a trace saved as uncalibrated reruns uncalibrated: its (calibrated) weights now differ from the new run's
    changed = dict(trace, settings=dict(trace["settings"], routing=dict(trace["settings"]["routing"], calibrated=False)))
    *_, (chips, summary, diff) = rerun_and_diff(key, changed)
    assert diff["new_trace"]["settings"]["routing"]["calibrated"] is False and diff["summary"]["max_abs_delta"] > 0.001
    assert f"largest weight difference is {diff['summary']['max_abs_delta']:.3f}" in summary
    assert chips.count("ax-flip") == diff["summary"]["n_routed_differs"]
    path.write_text('{"schema": "alignx-trace/1"}', encoding="utf-8")
    saved, line = load_saved(str(path))
    assert saved is None and "saved.json cannot be used: not a valid alignx-trace/1 trace" in line


@pytest.mark.slow
def test_the_app_benchmark_times_each_start_phase_in_a_fresh_process(checkpoint):
    from alignx_demo.app_bench import start_phases

    phases = start_phases(str(checkpoint), False)
    assert list(phases) == ["imports", "load_model", "build_page", "launch_server"]
    assert all(seconds > 0 for seconds in phases.values()) and phases["imports"] > phases["launch_server"]


def test_the_about_figures_read_what_calibration_and_the_base_record(tmp_path):
    """The figures come from the keys the training stages write (a key that no stage writes once printed an empty
    row), and the page says how the base began."""
    from alignx_demo.ui.about import base_origin, model_figures

    (tmp_path / "logs").mkdir()
    (tmp_path / "base").mkdir()
    report = {"select_token_nll": {"uncalibrated": 0.9, "fractal": 0.5}, "select_prompt_nll": {"uncalibrated": 0.8, "pooled": 0.4},
              "shift": {"prompt_nll": {"uncalibrated": 1.2, "pooled": 0.7}}}
    (tmp_path / "logs" / "calibration_summary.json").write_text(json.dumps({"report": report}))
    table = model_figures(tmp_path)
    assert "| calibration token NLL, select part | uncalibrated 0.900 → fractal 0.500 |" in table
    assert "| calibration prompt NLL, shift set | uncalibrated 1.200 → pooled 0.700 |" in table
    assert base_origin(tmp_path) == "its base trained from scratch"
    (tmp_path / "base" / "train_summary.json").write_text(json.dumps({"config": {"init": "minilm"}}))
    assert base_origin(tmp_path) == "its base warm-started from all-MiniLM-L6-v2"
