"""The opening sentences of the Axis Collapse, Routing analysis and Benchmarks tabs are computed from the
artefacts (a changed number changes the sentence; a missing file gives a notice, not a crash); the small
maps have one panel per regime; the forgetting bars are the artefact's numbers; and every number on the
confusion matrix meets WCAG AA against its own cell. Reads the committed `precomputed/`, no model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pytest

from alignx_demo.analysis.artefacts import DEFAULT_DIR, load_artefacts
from alignx_demo.config import AXES
from alignx_demo.serving import ModelContext
from alignx_demo.ui import collapse, results, routing_analysis
from alignx_demo.ui.plots import confusion_figure, forgetting_figure, regimes_figure
from alignx_demo.ui.served import serve
from alignx_demo.ui.theme import AXIS_COLORS, contrast


def _copy(tmp_path: Path, *names: str) -> Path:
    """A precomputed folder holding only copies of the named committed artefacts."""
    for name in names:
        shutil.copy(DEFAULT_DIR / name, tmp_path / name)
    return tmp_path


def _edit(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_collapse_intro_reads_forgetting_and_routing_from_the_artefact(tmp_path):
    folder = _copy(tmp_path, "collapse_metrics.json", "map.json")
    before = collapse.intro_markdown(load_artefacts(folder))
    row = json.loads((folder / "collapse_metrics.json").read_text())["regimes"]
    helpful, accuracy = row["sequential_sft"]["forgetting"]["helpful"]["forgetting"], row["mocae"]["routing_accuracy"]
    assert f"Helpful by {helpful:+.2f}" in before and f"sends {accuracy:.0%} of the" in before

    def change(data):
        data["regimes"]["sequential_sft"]["forgetting"]["helpful"]["forgetting"] = 1.234
        data["regimes"]["mocae"]["routing_accuracy"] = 0.5
    _edit(folder / "collapse_metrics.json", change)
    after = collapse.intro_markdown(load_artefacts(folder))
    assert "Helpful by +1.23" in after and "sends 50% of the" in after
    assert "interference" in after.lower() and "misrouting" in after.lower()  # both marks, explained


def test_collapse_intro_says_what_is_missing(tmp_path):
    artefacts = load_artefacts(tmp_path)
    text = collapse.intro_markdown(artefacts)
    assert "nothing to report — Precomputed file missing" in text and "collapse_metrics.json" in text
    assert collapse.grid_caption(artefacts).endswith("share.")  # no figure to quote, no crash
    assert collapse.forgetting_caption(artefacts) == ""
    assert "not shown" in forgetting_figure(*collapse.forgetting_of(artefacts)).layout.annotations[0].text


def test_small_multiples_have_one_panel_per_regime_in_the_axis_colours():
    map_data = load_artefacts().get("map")
    fig = regimes_figure(map_data, list(collapse.PANELS))
    regimes = [r for r, _ in collapse.PANELS if r in map_data["regimes"]]
    assert len(regimes) == len(map_data["regimes"])  # every regime of the map has a panel
    assert len({t.xaxis for t in fig.data}) == len(regimes)
    titles = [a.text for a in fig.layout.annotations]
    assert titles == [t for r, t in collapse.PANELS if r in map_data["regimes"]]
    dots = [t for t in fig.data if t.name in {"Helpful", "Harmless", "Honest"}]
    assert {(t.name, t.marker.color) for t in dots} == {(n.capitalize(), AXIS_COLORS[n]) for n in AXES}
    rings = [t for t in fig.data if t.name == "misrouted"]
    assert rings and all(t.marker.opacity <= 0.6 and t.marker.line.width <= 1 for t in rings)  # subtle


def test_forgetting_bars_are_the_artefacts_numbers():
    forgotten, note = collapse.forgetting_of(load_artefacts())
    bars = forgetting_figure(forgotten, note).data[0]
    assert list(bars.y) == [forgotten[a]["forgetting"] for a in AXES if a in forgotten]
    assert list(bars.x) == [a.capitalize() for a in AXES if a in forgotten]
    assert list(bars.marker.color) == [AXIS_COLORS[a] for a in AXES if a in forgotten]


def test_analysis_intro_reads_the_shipped_slice(tmp_path):
    folder = _copy(tmp_path, "routing_analysis.json")
    text = routing_analysis.intro_markdown(routing_analysis.shipped(load_artefacts(folder)), None)
    assert "the router sends 88% of the 120 prompts" in text and "(89% uncalibrated)" in text
    assert "and 77% by its weights over the tokens it generates" in text
    assert "worst slice is Helpful prompts at 82%" in text and "Helpful prompts sent to Harmless (6 of 40)" in text

    def change(data):
        levels = data["slices"]["map_prompts_calibrated"]["result"]["levels"]
        level = levels["prompt"]
        level["slices"]["all"]["all"]["accuracy"] = 0.71
        level["slices"]["axis"]["honest"]["accuracy"] = 0.1
        level["confusion"]["matrix"][2] = [1, 5, 34]
        del levels["generation"]
    _edit(folder / "routing_analysis.json", change)
    after = routing_analysis.intro_markdown(routing_analysis.shipped(load_artefacts(folder)), None)
    assert "sends 71% of the" in after and "worst slice is Honest prompts at 10%" in after
    assert "Helpful prompts sent to Harmless (6 of 40)" in after
    assert "not measured in this slice" in after  # a slice that routed no generated tokens says so
    missing = load_artefacts(tmp_path / "none")
    assert "no shipped slice to show — Precomputed file missing" in routing_analysis.intro_markdown({}, missing.notice("analysis"))


def test_benchmarks_intro_reads_eval_and_bench(tmp_path):
    folder = _copy(tmp_path, results.EVAL_FILE, results.BENCH_FILE)

    def intro() -> str:
        evaluation, notice = results.read_result(folder, results.EVAL_FILE, results.EVAL_SCHEMA, "E")
        bench, bench_notice = results.read_result(folder, results.BENCH_FILE, results.BENCH_SCHEMA, "B")
        return results.intro_markdown(evaluation, notice, bench, bench_notice)

    assert "refuses 69% of harmful prompts (Base 0%, Joint SFT 65%)" in intro() and "X-LoRA takes 9.0×" in intro()
    _edit(folder / results.EVAL_FILE, lambda d: d["systems"]["mocae_full"]["harmful_refusal_rate"].update(value=0.25))
    _edit(folder / results.BENCH_FILE, lambda d: d["ratios"].update(xlora_vs_mocae_latency=4.0))
    assert "refuses 25% of harmful prompts" in intro() and "X-LoRA takes 4.0×" in intro()
    (folder / results.BENCH_FILE).unlink()
    assert "The speed comparison is not available (Missing" in intro()


@pytest.mark.parametrize("matrix", [[[17, 22, 1], [3, 36, 1], [2, 15, 23]], [[10, 0, 0], [5, 5, 0], [1, 2, 3]],
                                    [[1, 1, 1], [0, 7, 3], [0, 0, 0]]])
def test_confusion_numbers_meet_wcag_aa_on_their_cells(matrix):
    fig = confusion_figure({"true": list(AXES), "routed": list(AXES), "matrix": matrix})
    heat = fig.data[0]
    scale = [c for _, c in heat.colorscale]
    assert all(c.startswith("#") and len(c) == 7 for c in scale), "opaque cells: a translucent one takes the page's colour"
    low, high = ([int(c[k:k + 2], 16) for k in (1, 3, 5)] for c in scale)
    notes = {(a.x, a.y): a.font.color for a in fig.layout.annotations}
    assert len(notes) == 9
    for i, row in enumerate(heat.z):
        for j, share in enumerate(row):
            cell = "#" + "".join(f"{round(a + (b - a) * share):02x}" for a, b in zip(low, high))
            assert contrast(notes[(heat.x[j], heat.y[i])], cell) >= 4.5, (i, j, cell)


def _build(folder: Path) -> None:
    """The three tabs in one Blocks, with no model (as when loading failed)."""
    key = serve(ModelContext(None, problem="no model in this test"))
    artefacts = load_artefacts(folder)
    with gr.Blocks(), gr.Tabs() as tabs, gr.Tab("tabs"):
        live = SimpleNamespace(prompt=gr.Textbox(), calibrated=gr.Checkbox(), run_after=lambda event: None)
        collapse.build_collapse_tab(key, artefacts)
        routing_analysis.build_analysis_tab(key, artefacts, tabs, live)
        results.build_results_tab(folder)


@pytest.mark.parametrize("which", ["committed", "none"])
def test_the_three_tabs_build_with_the_artefacts_and_without_them(tmp_path, which):
    _build(DEFAULT_DIR if which == "committed" else tmp_path)  # without them, every sentence says what is missing
