"""The Routing analysis tab's comparison with a second model (`ui.routing_analysis.compare_against` and what draws
its result), called directly on tiny checkpoints: the model against itself changes nothing (McNemar p = 1), a
different checkpoint's changes are listed and match `compare_models`, a shipped slice is compared under its own
routing, and without a second model the section and the handler say so in one sentence."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pytest
import torch
from conftest import LABELLED_PROMPTS, build_checkpoint

from alignx_demo.analysis.artefacts import Artefacts
from alignx_demo.analysis.failures import analyze_prompts
from alignx_demo.config import RoutingSettings
from alignx_demo.modeling import TemperatureScaling, load_mocae
from alignx_demo.modeling.calibration import CalibrationStack
from alignx_demo.serving import Limits, ModelContext
from alignx_demo.ui import routing_analysis as ra
from alignx_demo.ui.served import serve
from alignx_demo.ui.validation import GenerationError

ROWS = [{"prompt": p, "axis": a, "source": s} for p, a, s in LABELLED_PROMPTS]


@pytest.fixture(scope="module")
def models(tmp_path_factory, tokenizer):
    """Two tiny calibrated checkpoints loaded once (calibration as conftest's `checkpoint`): A (seed 0) and B (seed 3)."""
    root = tmp_path_factory.mktemp("compare-tab")
    return tuple(load_mocae(build_checkpoint(root / name, tokenizer, seed=seed, calibration=CalibrationStack(
        TemperatureScaling(torch.tensor([2.0, 0.5])))), load_in_4bit=False) for name, seed in (("a", 0), ("b", 3)))


@pytest.fixture
def prompt_file(tmp_path) -> dict:
    """`ROWS` as an upload (the file object the page delivers)."""
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n", encoding="utf-8")
    return {"path": str(path), "orig_name": "prompts.jsonl"}


def keys(first, second, limits: Limits | None = None) -> tuple[int, int]:
    """`serve` keys of two model contexts (separate contexts even for the same loaded model, as the app's would be)."""
    limits = limits or Limits()
    return serve(ModelContext(first, limits=limits)), serve(ModelContext(second, limits=limits))


def build(against: ModelContext | None) -> gr.Blocks:
    """The tab alone in a Blocks, with no shipped slices and a stand-in for the live tab."""
    key = serve(ModelContext(None, problem="no model in this test"))
    with gr.Blocks() as demo, gr.Tabs() as tabs, gr.Tab("analysis"):
        live = SimpleNamespace(prompt=gr.Textbox(), calibrated=gr.Checkbox(), run_after=lambda event: None)
        ra.build_analysis_tab(key, Artefacts(Path("/nonexistent")), tabs, live, against)
    return demo


def api_names(demo: gr.Blocks) -> set[str]:
    return {fn.api_name for fn in demo.fns.values() if fn.api_name}


def html_values(demo: gr.Blocks) -> str:
    return "\n".join(str(b.value) for b in demo.blocks.values() if isinstance(b, gr.HTML))


def test_without_a_second_model_the_section_and_the_handler_say_so_in_one_sentence(models, prompt_file):
    notice = ra.NO_SECOND_MODEL
    assert notice.count(". ") == 0 and notice.endswith(".") and "--compare-model" in notice
    assert ra.second_model_notice(None) == notice
    key = serve(ModelContext(models[0]))
    with pytest.raises(GenerationError) as err:
        ra.compare_against(key, None, prompt_file, True)
    assert str(err.value) == notice
    demo = build(None)
    assert "analyze_against" not in api_names(demo) and "analyze" in api_names(demo)
    assert "No second model to compare with" in html_values(demo)
    # configured but not loaded: the endpoint exists, the button is off and both say why
    broken = ModelContext(None, problem="The model could not be loaded: no such folder.")
    demo = build(broken)
    assert "analyze_against" in api_names(demo)
    assert "not loaded, so there is nothing to compare with: The model could not be loaded" in html_values(demo)
    button = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "analysis-against-run")
    assert button.interactive is False
    with pytest.raises(GenerationError, match="second model \\(B\\) is not loaded"):
        ra.compare_against(key, serve(broken), prompt_file, True)


def test_the_served_model_against_itself_changes_nothing(models, prompt_file):
    key, same = keys(models[0], models[0])
    seen = []
    summary, comparison = ra.compare_against(key, same, prompt_file, True, progress=lambda *a: seen.append(a))
    assert {side for side, _, _ in seen} == {"A", "B"} and seen[-1] == ("B", 6, 6)
    assert comparison["paired"] == 6 and comparison["prompts_file"] == "prompts.jsonl" and not comparison["notices"]
    assert comparison["a"]["routing"] == comparison["b"]["routing"] and comparison["b"]["routing"]["calibrated"] is True
    assert set(comparison["analyses"]) == {"a", "b"} and set(comparison["levels"]) == {"prompt", "generation"}
    for s in comparison["levels"].values():
        assert (s["mcnemar"]["b"], s["mcnemar"]["c"], s["mcnemar"]["p_value"]) == (0, 0, 1.0)
        assert s["routed_changed"] == 0 and s["mean_confidence_change"] == 0 and s["a"]["accuracy"] == s["b"]["accuracy"]
        assert s["changes"]["became correct"] == s["changes"]["became wrong"] == 0
        assert s["ece_difference"]["value"] == 0 and s["ece_difference"]["ci95"] == [0, 0]
    assert ra.change_rows(comparison) == []
    assert summary.count("McNemar p = 1 — 0 became correct and 0 became wrong; no labelled prompt changed") == 2
    assert summary.count("The routed axis changed on **0 of 6** prompts.") == 2 and "**6 prompts** of **prompts.jsonl**" in summary
    table, details, csv_file, json_file = ra.render_comparison(comparison)
    assert table["data"] == [] and table["headers"] == ra.CHANGE_HEADERS
    assert "| prompt | 6 | 0 | 0 | 1 |" in details and "| generation | 6 | 0 | 0 | 1 |" in details
    assert csv_file.visible and json_file.visible
    lines = list(csv.reader(io.StringIO(Path(csv_file.value["path"]).read_text(encoding="utf-8"))))
    assert len(lines) == 7 and lines[0][:6] == ["index", "row", "prompt", "axis", "source", "routed_a"]
    assert json.loads(Path(json_file.value["path"]).read_text(encoding="utf-8"))["paired"] == 6
    hidden = ra.render_comparison(None)
    assert hidden[0]["data"] == [] and hidden[1] == "" and not hidden[2].visible


def test_a_second_checkpoint_lists_the_prompts_that_changed_under_the_row_limit(models, prompt_file):
    key, other = keys(*models, limits=Limits(max_analysis_rows=4))
    summary, comparison = ra.compare_against(key, other, prompt_file, False)
    assert comparison["paired"] == 4 and comparison["analyses"]["b"]["analysed"] == 4
    assert comparison["a"]["routing"]["calibrated"] is comparison["b"]["routing"]["calibrated"] is False
    rows = [r for r in comparison["rows"] if r["levels"]["prompt"]["routed_changed"]
            or r["levels"]["prompt"]["correct_a"] != r["levels"]["prompt"]["correct_b"]]
    assert rows, "the two seeds route some of these prompts differently"
    listed = ra.change_rows(comparison)
    assert sorted(r["row"] for r in listed) == sorted(r["row"] for r in rows)
    order = [ra.CHANGE_ORDER.get(r["levels"]["prompt"]["change"], 2) for r in listed]
    assert order == sorted(order), "became wrong first, then became correct, then routed elsewhere"
    table = ra.change_table(listed)
    for line, r in zip(table["data"], listed):
        cell = r["levels"]["prompt"]
        assert line[0] == r["row"] and line[5] == r["prompt"]
        assert line[3] == f"{cell['confidence_a']:.2f} → {cell['confidence_b']:.2f}"
        assert ("→" in line[2]) == cell["routed_changed"]
    s = comparison["levels"]["prompt"]
    assert f"**accuracy {s['a']['accuracy']:.2f} (A) vs {s['b']['accuracy']:.2f} (B)**, McNemar p = {s['mcnemar']['p_value']:.3g}" in summary
    assert f"**ECE {s['a']['ece']:.3f} (A) vs {s['b']['ece']:.3f} (B)**, B − A {s['ece_difference']['value']:+.3f}" in summary
    assert f"The routed axis changed on **{s['routed_changed']} of 4** prompts." in summary
    assert "**Prompt level** (the mean routing weights over the prompt's tokens), on 4 labelled prompts" in summary
    assert f"{s['mcnemar']['c']} became correct and {s['mcnemar']['b']} became wrong" in summary
    details = ra.comparison_details_markdown(comparison)
    assert f"| prompt | 4 | {s['mcnemar']['c']} | {s['mcnemar']['b']} | {s['mcnemar']['p_value']:.4g} |" in details
    assert "analyze --model A --against B" in details and "Newcombe" in details


def test_a_shipped_slice_is_compared_under_its_own_routing_when_no_file_is_uploaded(models):
    key, other = keys(*models)
    result = analyze_prompts(models[0], None, ROWS, generate_tokens=0, routing=RoutingSettings(mode="soft", calibrated=False))
    summary, comparison = ra.compare_against(key, other, None, True, {"label": "tiny slice", "result": result})
    assert comparison["paired"] == 6 and set(comparison["levels"]) == {"prompt"}
    assert comparison["a"]["routing"]["calibrated"] is comparison["b"]["routing"]["calibrated"] is False
    assert comparison["prompts_file"] == "tiny slice" and not comparison["settings_changed"]
    assert [r["prompt"] for r in comparison["rows"]] == [r["prompt"] for r in ROWS]
    assert "of **tiny slice** (uncalibrated soft routing)" in summary
    with pytest.raises(GenerationError, match="upload a prompt file first"):
        ra.compare_against(key, other, None, True)


def test_the_level_choice_draws_the_generation_levels_matrix_slices_and_misrouted_rows(models):
    """The matrix, the slice table and the misrouted table follow the level chosen; a result measured at prompt level
    only draws its prompt level whatever is chosen."""
    result = analyze_prompts(models[0], None, ROWS, generate_tokens=3, routing=RoutingSettings(mode="soft", calibrated=False))
    prompt, generation = result["levels"]["prompt"], result["levels"]["generation"]
    drawn = {level: ra.views(result, level) for level in ("prompt", "generation")}
    assert "generation level" in drawn["generation"][0].layout.title.text and "prompt level" in drawn["prompt"][0].layout.title.text
    assert drawn["generation"][4] == generation["misrouted"][:ra.SHOWN_ROWS]
    assert drawn["prompt"][4] == prompt["misrouted"][:ra.SHOWN_ROWS]
    overall = generation["slices"]["all"]["all"]
    assert f"| {overall['n']} | {overall['accuracy']:.2f}" in drawn["generation"][1]
    assert drawn["generation"][0].data[0].z != drawn["prompt"][0].data[0].z or generation["confusion"] == prompt["confusion"]
    only_prompt = analyze_prompts(models[0], None, ROWS, generate_tokens=0, routing=RoutingSettings(mode="soft", calibrated=False))
    assert ra.views(only_prompt, "generation")[1] == ra.views(only_prompt, "prompt")[1]


def test_a_slice_shipped_by_data_ids_shows_ids_and_is_never_rerun(models):
    """The out-of-distribution slices ship their prompts' data ids, not the benchmark text: every prompt the tab
    shows is an id, the summary says why, and neither the comparison nor a click on a row can route an id as text."""
    from alignx_demo.analysis.failures import redact_prompts

    rows = [r | {"id": f"tiny:{i}"} for i, r in enumerate(ROWS)]
    result = analyze_prompts(models[0], None, rows, generate_tokens=2, routing=RoutingSettings(mode="soft", calibrated=False))
    shipped = redact_prompts(result)
    shown = [r["prompt"] for r in shipped["rows"]] + [r["prompt"] for lv in shipped["levels"].values() for r in lv["misrouted"]]
    assert shown and all(p.startswith("tiny:") for p in shown)
    assert not {p for p, _, _ in LABELLED_PROMPTS} & set(json.dumps(shipped["rows"]).split('"'))
    assert shipped["levels"]["prompt"]["confusion"] == result["levels"]["prompt"]["confusion"]
    assert result["rows"][0]["prompt"] == ROWS[0]["prompt"], "the analysis itself is left as it was"
    assert "Each prompt is shown by its data id" in ra.summary_markdown(shipped)
    key, other = keys(*models)
    with pytest.raises(GenerationError, match="data ids, not their text"):
        ra.compare_against(key, other, None, True, {"label": "OOD slice", "result": shipped})
