"""Your labels, your axes: a checkpoint's axes (`MoCaEConfig.axes`, 2 to 6 names) come from its own experts and
reach the CLI, training on your labels, traces, attribution, settle curves, `analyze` and the page; the HHH
three stay the default, and the HHH-only tools (evaluation, training on the project's data) refuse others."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_byo_experts import make_adapter, make_base

from alignx_demo.config import AXES, MoCaEConfig, RoutingSettings
from alignx_demo.modeling import CheckpointError, load_mocae
from alignx_demo.modeling.adapters import import_adapters

REPO = Path(__file__).resolve().parent.parent
WORDS = {  # prompts in the tiny tokenizer's words, one theme per axis
    "formal": "The capital of France is Paris. Water boils at 100 degrees Celsius",
    "casual": "How do I bake bread? Mix flour, water, salt and yeast",
    "terse": "I cannot help with that request",
    "vague": "I do not know the answer for certain; the evidence suggests otherwise",
}


# the config ------------------------------------------------------------------------------------------------

def test_config_axes_default_to_hhh_round_trip_and_old_checkpoints_read_as_hhh():
    assert MoCaEConfig().axes == AXES and MoCaEConfig().n_experts == 3
    custom = MoCaEConfig(axes=["formal", "casual"])
    data = json.loads(json.dumps(custom.to_dict()))
    assert data["axes"] == ["formal", "casual"] and MoCaEConfig.from_dict(data).axes == ("formal", "casual")
    old = {k: v for k, v in MoCaEConfig().to_dict().items() if k != "axes"}
    assert MoCaEConfig.from_dict(old).axes == AXES


@pytest.mark.parametrize("axes, message", [
    (["formal"], "needs 2 to 6 axes, got 1"), ("formal", "needs 2 to 6 axes, got 1"),
    ([f"a{i}" for i in range(7)], "needs 2 to 6 axes, got 7"), (["formal", "formal"], "must be distinct"),
    (["Formal", "casual"], "axis name 'Formal'"), (["9lives", "casual"], "starting with a letter"),
    (["a" * 25, "casual"], "1-24 characters"), (["has space", "casual"], "axis name 'has space'"),
    (["ok", 3], "axis name 3"),
])
def test_bad_axes_are_one_sentence_errors(axes, message):
    with pytest.raises(ValueError, match=message) as err:
        MoCaEConfig(axes=axes)
    assert "\n" not in str(err.value) and str(err.value).count(". ") == 0
    with pytest.raises(ValueError, match=message):
        MoCaEConfig.from_dict(MoCaEConfig().to_dict() | {"axes": axes})


def test_a_checkpoint_with_six_axes_and_edge_names_is_accepted():
    names = ["a", "b-2", "c_3", "d" * 24, "e", "f"]
    assert MoCaEConfig(axes=names).axes == tuple(names)


# building a custom-axes checkpoint ---------------------------------------------------------------------------

def write_labels(path: Path, axes: list[str], n: int = 24) -> Path:
    """n variants of each axis's theme (distinct text, so the 80/10/10 hash split gives every axis train rows)."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt", "axis", "response", "source"])
        for i in range(n):
            for axis in axes:
                writer.writerow([f"{WORDS[axis]} {i}?", axis.upper() if i == 1 else axis,  # labels in any case
                                 "Paris." if i % 4 == 0 else "", "mine" if i % 2 else "theirs"])
    return path


def make_experts(root: Path, tokenizer, axes: list[str]) -> tuple[Path, dict[str, Path]]:
    """A tiny llama base and one plain PEFT LoRA adapter per axis (different ranks)."""
    base = make_base(root / "base", "llama", tokenizer)
    return base, {axis: make_adapter(root / axis, "llama", seed=k + 1, r=2 + 2 * (k % 2), lora_alpha=8)
                  for k, axis in enumerate(axes)}


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "alignx_demo", *args], capture_output=True, text=True, timeout=900,
                          cwd=REPO)


def test_import_keeps_your_order_and_the_hhh_three_in_any_order_stay_hhh(tmp_path, tokenizer):
    base, adapters = make_experts(tmp_path, tokenizer, ["casual", "formal", "terse", "vague"])
    summary = import_adapters(tmp_path / "four", base, adapters)
    assert list(summary["experts"]) == ["casual", "formal", "terse", "vague"]
    loaded = load_mocae(tmp_path / "four", load_in_4bit=False, allow_untrained=True)
    assert loaded.mocae.axes == ("casual", "formal", "terse", "vague")
    assert {p.name for p in (tmp_path / "four" / "experts").iterdir()} == set(adapters)
    assert all(r.proj.out_features == 4 for r in loaded.mocae.routers)
    assert all(m.lora_A.shape[0] == 4 * loaded.mocae.config.rank for m in loaded.mocae.expert_modules.values())
    hhh = dict(zip(reversed(AXES), adapters.values()))  # honest, harmless, helpful: stored in the bundle's order
    import_adapters(tmp_path / "hhh", base, hhh)
    assert load_mocae(tmp_path / "hhh", load_in_4bit=False, allow_untrained=True).mocae.axes == AXES


def test_checkpoint_files_that_disagree_with_the_axes_are_refused(tmp_path, tokenizer):
    base, adapters = make_experts(tmp_path, tokenizer, ["formal", "casual"])
    import_adapters(tmp_path / "moe", base, adapters)
    config = json.loads((tmp_path / "moe" / "mocae_config.json").read_text())
    (tmp_path / "moe" / "mocae_config.json").write_text(json.dumps(config | {"axes": ["formal", "casual", "terse"]}))
    with pytest.raises(CheckpointError, match="terse"):
        load_mocae(tmp_path / "moe", load_in_4bit=False, allow_untrained=True)
    (tmp_path / "moe" / "mocae_config.json").write_text(json.dumps(config | {"axes": ["formal", "Casual"]}))
    with pytest.raises(CheckpointError, match="axis name 'Casual'"):
        load_mocae(tmp_path / "moe", load_in_4bit=False, allow_untrained=True)


@pytest.fixture(scope="module")
def two_axes(tmp_path_factory, tokenizer) -> tuple[Path, Path]:
    """(checkpoint, labels file) of `train router --experts formal=…,casual=… --prompts` and `train calibrate
    --prompts`, the two commands of docs/training.md, with the quick recipe."""
    root = tmp_path_factory.mktemp("two-axes")
    base, adapters = make_experts(root, tokenizer, ["formal", "casual"])
    labels = write_labels(root / "labels.csv", ["formal", "casual"])
    out = root / "runs" / "x"
    experts = ",".join(f"{axis}={folder}" for axis, folder in adapters.items())
    common = ["--quick", "--prompts", str(labels), "--out", str(out), "--no-progress"]
    done = cli("train", "router", "--experts", experts, "--base-model", str(base), *common)
    assert done.returncode == 0, done.stderr[-3000:]
    done = cli("train", "calibrate", *common)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, labels


@pytest.fixture(scope="module")
def two_loaded(two_axes):
    return load_mocae(two_axes[0], load_in_4bit=False)


def test_trained_two_axis_checkpoint_has_your_axes_everywhere(two_axes, two_loaded):
    out, _ = two_axes
    assert json.loads((out / "mocae_config.json").read_text())["axes"] == ["formal", "casual"]
    assert two_loaded.mocae.axes == ("formal", "casual") and two_loaded.mocae.calibration is not None
    assert all(r.proj.out_features == 2 and r.proj.weight.abs().sum() > 0 for r in two_loaded.mocae.routers)
    assert two_loaded.mocae.calibration.parts[0].class_means.shape[1] == 2
    summary = json.loads((out / "logs" / "calibration_summary.json").read_text())
    assert summary["prompts"] > 0 and summary["shift_prompts"] == {}


def test_traces_attribution_settle_and_diffs_use_the_models_axes(two_loaded, tmp_path):
    from alignx_demo.analysis.traces import diff_traces, load_trace, validate_trace
    from alignx_demo.session import Session

    session = Session.of(two_loaded)
    trace = session.generate(WORDS["formal"] + "?", max_new_tokens=4)
    assert trace["axes"] == ["formal", "casual"] and validate_trace(trace) is trace
    assert all(set(t["weights"]) == {"formal", "casual"} and len(t["layers"][0]) == 2 and t["top_expert"] in trace["axes"]
               for t in trace["tokens"])
    assert set(trace["run_weights"]) == {"formal", "casual"}
    path = tmp_path / "t.json"
    path.write_text(json.dumps(trace))
    assert load_trace(path) == trace
    broken = json.loads(json.dumps(trace))
    broken["tokens"][0]["weights"]["helpful"] = 0.0
    with pytest.raises(ValueError, match="tokens\\[0\\].weights: unexpected field 'helpful'"):
        validate_trace(broken)
    forced = session.generate(WORDS["formal"] + "?", max_new_tokens=4, axis_prior="0,1")
    assert forced["tokens"][-1]["weights"] == {"formal": 0.0, "casual": 1.0}
    with pytest.raises(ValueError, match="exactly 2 numbers \\(formal, casual\\)"):
        session.generate("hi", axis_prior="1,0,0")
    diff = diff_traces(trace, forced)
    assert diff["axes"] == ["formal", "casual"] and set(diff["summary"]["mean_abs_delta"]) == {"formal", "casual"}
    result = session.attribute(trace)
    assert result["axes"] == ["formal", "casual"] and result["batch"]["run"] == 5
    assert result["variants"] == ["actual", "remove formal", "remove casual", "force formal", "force casual"]
    assert set(result["tokens"][0]["effect"]) == {"formal", "casual"}
    settle = session.settle(WORDS["casual"] + "?")
    assert settle["axes"] == ["formal", "casual"] and settle["routed"] in ("formal", "casual")


def test_analyze_a_labelled_file_on_the_cli(two_axes, tmp_path):
    out, labels = two_axes
    report = tmp_path / "analysis.json"
    done = cli("analyze", "--model", str(out), "--no-4bit", "--prompts", str(labels), "--out", str(report),
               "--csv", str(tmp_path / "rows.csv"), "--generate-tokens", "2", "--max-rows", "12", "--no-progress")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(report.read_text())
    assert result["axes"] == ["formal", "casual"] and result["rejected"] == 0 and result["analysed"] == 12
    assert result["levels"]["prompt"]["confusion"]["true"] == ["formal", "casual"]
    assert {r["axis"] for r in result["rows"]} == {"formal", "casual"}
    header = (tmp_path / "rows.csv").read_text().splitlines()[0].split(",")
    assert "formal" in header and "gen_casual" in header and "helpful" not in header


def test_hhh_only_tools_refuse_your_axes_in_one_sentence(two_axes, tmp_path):
    from alignx_demo.evaluation.harness import evaluate
    from alignx_demo.training.pipeline import run_stages

    out, _ = two_axes
    with pytest.raises(CheckpointError, match="evaluate measures the HHH axes .* has the axes formal, casual") as err:
        evaluate(out, tmp_path, quick=True, progress=False)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="has the axes formal, casual, and the project's data trains the HHH axes only"):
        run_stages(["router"], data_dir=tmp_path, out=out, quick=True, progress=False,
                   base_model=json.loads((out / "mocae_config.json").read_text())["base_model"])
    done = cli("evaluate", "--model", str(out), "--data-dir", str(tmp_path), "--quick", "--out", str(tmp_path / "e.json"))
    assert done.returncode != 0 and "Traceback" not in done.stderr and "formal, casual" in done.stderr


def test_four_axes_train_on_labels_and_generate(tmp_path, tokenizer):
    from alignx_demo.session import Session
    from alignx_demo.training.pipeline import run_stages

    axes = ["formal", "casual", "terse", "vague"]
    base, adapters = make_experts(tmp_path, tokenizer, axes)
    import_adapters(tmp_path / "four", base, adapters)
    labels = write_labels(tmp_path / "labels.csv", axes)
    run_stages(["router", "calibrate"], data_dir=tmp_path, out=tmp_path / "four", quick=True, threads=1, progress=False,
               base_model=str(base), prompts=labels)
    session = Session(tmp_path / "four", load_in_4bit=False)
    trace = session.generate(WORDS["terse"] + "?", max_new_tokens=3,
                             axis_prior=RoutingSettings(axis_prior=(1, 1, 1, 1)).axis_prior)
    assert trace["axes"] == axes and trace["tokens"][-1]["weights"] == dict.fromkeys(axes, 0.25)
    assert session.analyze(str(labels), generate_tokens=0, max_rows=8)["levels"]["prompt"]["confusion"]["true"] == axes


def test_the_page_serves_your_axes_on_live_and_routing_analysis(two_axes, two_loaded, tmp_path):
    import httpx
    from gradio_client import Client, handle_file

    from alignx_demo.serving import ModelContext
    from alignx_demo.ui.app import LAUNCH_KWARGS, build_demo

    demo = build_demo(ModelContext(two_loaded), Path(__file__).parent.parent / "precomputed")  # the HHH bundle's
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=None, quiet=True, **LAUNCH_KWARGS)
    try:
        client = Client(demo.local_url, verbose=False)
        endpoints = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
        assert {"/generate", "/analyze", "/attribute"} <= endpoints and not {"/tradeoff", "/presets"} & endpoints
        chips, summary, trace = client.predict(prompt=WORDS["formal"] + "?", max_new_tokens=3, api_name="/generate")
        assert trace["axes"] == ["formal", "casual"] and set(trace["tokens"][-1]["weights"]) == {"formal", "casual"}
        assert "Formal" in summary and "Casual" in summary and "Helpful" not in summary
        assert "formal" in chips and "helpful" not in chips
        _, analysis = client.predict(prompts_file=handle_file(str(two_axes[1])), calibrated=True, api_name="/analyze")
        assert analysis["axes"] == ["formal", "casual"] and analysis["rejected"] == 0
        assert analysis["levels"]["prompt"]["confusion"]["true"] == ["formal", "casual"]
        page = httpx.get(demo.local_url.rstrip("/") + "/config", timeout=30).text  # the page's components
        assert "This tab belongs to the HHH bundle" in page and "Formal expert" in page and "Helpful expert" not in page
        assert '"elem_id":"stories"' not in page and "Do vaccines cause autism?" not in page  # the bundle's stories, examples
    finally:
        demo.close()


def test_palette_keeps_hhh_colours_and_gives_others_distinct_ones():
    from alignx_demo.ui.theme import AXIS_COLORS, AXIS_LABELS, PALETTE, axis_colors, mix_color

    assert axis_colors(AXES) == AXIS_COLORS
    six = axis_colors(["a", "b", "c", "d", "e", "f"])
    assert list(six.values()) == list(PALETTE) and len(set(six.values())) == 6
    assert axis_colors(["formal", "helpful"]) == {"formal": PALETTE[0], "helpful": AXIS_COLORS["helpful"]}
    assert mix_color({"formal": 1.0, "casual": 0.0}) == PALETTE[0] and AXIS_LABELS["formal"] == "Formal"
    assert mix_color(dict(zip(AXES, (0.2, 0.5, 0.3)))) == "#548956"  # the HHH mix, as before this change


def test_a_second_model_of_other_axes_is_refused_in_one_sentence(two_loaded, checkpoint):
    """The Routing analysis comparison pairs routing over the same axes: a second model of other axes gets one sentence."""
    from alignx_demo.serving import ModelContext
    from alignx_demo.ui import routing_analysis as ra

    hhh = load_mocae(checkpoint, load_in_4bit=False)
    notice = ra.second_model_notice(ModelContext(two_loaded), hhh.mocae.axes)
    assert "routes over other axes (formal, casual) than the served model (helpful, harmless, honest)" in notice
    assert notice.count(". ") == 0 and ra.second_model_notice(ModelContext(two_loaded), ("formal", "casual")) is None
    assert ra.second_model_notice(ModelContext(hhh), None) is None
