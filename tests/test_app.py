"""The app served for real (in-process, prevent_thread_lock) and driven through gradio_client."""

from __future__ import annotations

import json
import logging
import re
import threading
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


def readme_api_example() -> str:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n### API\n", 1)[1].split("\n### ", 1)[0]
    return "\n".join(re.findall(r"```python\n(.*?)```", section, flags=re.S))


def test_the_readme_api_example_runs_and_covers_every_endpoint(served, capsys):
    code = readme_api_example()
    assert {f'api_name="{api}"' for api in API} <= set(re.findall(r'api_name="/\w+"', code))
    exec(compile(code.replace("http://127.0.0.1:7860/", served.src), "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "prompt" in printed and "too harmless" in printed


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
    from alignx_demo.ui.runner import serve

    key = serve(ModelContext(load_mocae(checkpoint, load_in_4bit=False)))
    stop = threading.Event()
    stop.set()
    *_, (chips, summary, trace) = stream_generate(key, "Tell me a long story.", 40, *GEN, True, "soft", stop)
    assert trace["finish_reason"] == "stopped" and trace["tokens"] and all(t["is_prompt"] for t in trace["tokens"])
    assert summary.startswith(f"**0 generated + {len(trace['tokens'])} prompt tokens** · finish: **stopped**")
    assert chips.count('<span class="ax-chip') == len(trace["tokens"])
    assert trace["notices"] == ["generation stopped with Stop after 0 new token(s)"]


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
    from alignx_demo.ui.runner import serve

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


def test_reliability_sentence_says_which_routing_is_better_from_the_numbers():
    from alignx_demo.ui.compare import reliability_sentence

    def variants(cal: float, unc: float) -> dict:
        return {name: {"prompt_metrics": {"ece": ece, "n": 40}} for name, ece in (("uncalibrated", unc), ("calibrated", cal))}

    worse = reliability_sentence(variants(0.217, 0.130), "Evaluation split")
    assert "**uncalibrated** routing is better calibrated here: ECE 0.130 against 0.217 calibrated, 0.087 lower" in worse
    better = reliability_sentence(variants(0.05, 0.098), "XSTest")
    assert "**calibrated** routing is better calibrated here: ECE 0.050 against 0.098 uncalibrated, 0.048 lower" in better


def test_collapse_neighbours_name_the_router_only_where_there_is_one():
    from alignx_demo.ui.collapse import neighbours_markdown

    near = [{"axis": a, "text": "t", "distance": 0.1, "index": 0} for a in ("harmless", "harmless", "helpful")]
    placement = {"k": 3, "router_axis": "harmless", "regimes": {r: {"x": 0, "y": 0, "neighbours": near} for r in ("joint_sft", "mocae")}}
    joint = neighbours_markdown(placement, "joint_sft")
    assert "router sends" not in joint and "no router; 2 of the 3 nearest prompts are **Harmless**" in joint
    assert "the calibrated router sends it mostly to **Harmless**" in neighbours_markdown(placement, "mocae")


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


def test_the_app_starts_without_the_evaluation_stack():
    import subprocess
    import sys

    code = "import sys, app; heavy = {'torchmetrics', 'alignx_demo.evaluation.harness', 'umap'} & set(sys.modules); assert not heavy, heavy"
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
