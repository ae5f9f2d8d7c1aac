"""Calibrated vs uncalibrated tab: one prompt, one seed, both routings side by side.

The named endpoint `compare` streams (calibrated chips HTML, uncalibrated chips HTML, summary
markdown, result JSON {"calibrated": trace, "uncalibrated": trace, "summary": {...}}); the summary
is filled in the last update. Reliability diagrams come from the precomputed evaluation data.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from functools import partial
from typing import Any

import gradio as gr

from alignx_demo.analysis.artefacts import Artefacts
from alignx_demo.config import AXES, is_hhh
from alignx_demo.data.ood import OOD_SLICE_NAMES, UNSEEN_SLICES
from alignx_demo.ui import stops
from alignx_demo.ui.chips import chips_html, legend_html, notice_html
from alignx_demo.ui.links import LinkTarget, copy_link_row
from alignx_demo.ui.notice import notice_block
from alignx_demo.ui.plots import empty_figure, reliability_figure, shares_figure
from alignx_demo.ui.runner import shares, stream_stoppable
from alignx_demo.ui.served import MODEL_EVENT, token_cap
from alignx_demo.ui.slides import download_row, download_updates, write_run_downloads
from alignx_demo.ui.theme import AXIS_LABELS
from alignx_demo.ui.validation import MODES, TEMPERATURE_RANGE, TOP_P_RANGE, one_of, settings_from, visitor_errors

RUNS = ("calibrated", "uncalibrated")
TAB = "compare"


def run_summary(trace: dict[str, Any]) -> dict[str, Any]:
    tokens = trace["tokens"]
    n = max(len(tokens), 1)
    return {
        "tokens": len(tokens),
        "generated": sum(not t["is_prompt"] for t in tokens),
        "mean_confidence": round(sum(max(t["weights"].values()) for t in tokens) / n, 4),
        "mean_entropy": round(sum(t["entropy"] for t in tokens) / n, 4),
        "axis_shares": {a: round(v, 4) for a, v in shares(trace).items()},
        "text": trace["text"],
    }


def flips(a: dict[str, Any], b: dict[str, Any]) -> tuple[dict[int, str], dict[int, str], dict[str, Any]]:
    """Positions (present in both) where the top expert differs; for each side, the other's choice."""
    by_pos_b = {t["position"]: t for t in b["tokens"]}
    marks_a, marks_b = {}, {}
    n_prompt = n_gen = 0
    diverged_at = None
    for t in a["tokens"]:
        u = by_pos_b.get(t["position"])
        if u is None:
            continue
        if diverged_at is None and t["id"] != u["id"]:
            diverged_at = t["position"]
        if t["top_expert"] != u["top_expert"]:
            marks_a[t["position"]], marks_b[t["position"]] = u["top_expert"], t["top_expert"]
            n_prompt += t["is_prompt"]
            n_gen += not t["is_prompt"]
    return marks_a, marks_b, {"flips": n_prompt + n_gen, "flips_prompt": n_prompt, "flips_generated": n_gen,
                              "compared_positions": sum(t["position"] in by_pos_b for t in a["tokens"]),
                              "texts_diverge_at": diverged_at}


def summary_markdown(summary: dict[str, Any]) -> str:
    cal, unc, f = summary["calibrated"], summary["uncalibrated"], summary["flips"]
    rows = [
        "| | calibrated | uncalibrated |",
        "|---|---|---|",
        f"| mean confidence (top weight) | {cal['mean_confidence']:.3f} | {unc['mean_confidence']:.3f} |",
        f"| mean routing entropy (nats) | {cal['mean_entropy']:.3f} | {unc['mean_entropy']:.3f} |",
    ]
    rows += [f"| {AXIS_LABELS[a]} share | {cal['axis_shares'][a]:.0%} | {unc['axis_shares'][a]:.0%} |" for a in cal["axis_shares"]]
    rows.append(f"| generated tokens | {cal['generated']} | {unc['generated']} |")
    diverge = ("the generated texts are identical" if f["texts_diverge_at"] is None
               else f"the texts diverge at token #{f['texts_diverge_at']}")
    return "\n".join(rows) + (
        f"\n\n**Top expert flips: {f['flips']}** of {f['compared_positions']} positions "
        f"({f['flips_prompt']} prompt, {f['flips_generated']} generated; outlined in red) — {diverge}."
    )


@visitor_errors
def stream_compare(key: int, prompt: str, max_new_tokens: float, do_sample: bool, temperature: float, top_p: float,
                   seed: float, mode: str, stop: threading.Event | None = None) -> Iterator[tuple[str, str, str, Any]]:
    """Yield (calibrated chips, uncalibrated chips, summary, result) while generating both runs; `stop` ends
    the comparison where it is (a run that never started is absent from the result)."""
    generation = settings_from(max_new_tokens, do_sample, temperature, top_p, seed, token_cap(key, several=True)).to_dict()
    mode = one_of(mode, "routing mode", MODES)
    traces: dict[str, dict[str, Any]] = {}
    routings = [{"mode": mode, "calibrated": name == "calibrated"} for name in RUNS]
    for index, trace in stream_stoppable(key, prompt, generation, routings, stop):
        name = RUNS[index]
        traces[name] = trace
        html_cal = chips_html(traces["calibrated"]["tokens"])
        html_unc = chips_html(trace["tokens"]) if name == "uncalibrated" else chips_html([], empty="waiting for the calibrated run…")
        yield html_cal, html_unc, f"Running the {name} routing…", gr.skip()
    if len(traces) < len(RUNS) or any(t["finish_reason"] == "stopped" for t in traces.values()):
        stopped = "; ".join(f"{name}: {len([t for t in tr['tokens'] if not t['is_prompt']])} new token(s)" for name, tr in traces.items())
        yield (gr.skip(), gr.skip() if "uncalibrated" in traces else chips_html([], empty="not run: stopped"),
               f"**Stopped** with Stop before both runs finished ({stopped}); no comparison is drawn.",
               {**traces, "summary": None})
        return
    marks_cal, marks_unc, flip_stats = flips(traces["calibrated"], traces["uncalibrated"])
    summary = {name: run_summary(traces[name]) for name in RUNS} | {"flips": flip_stats}
    result = {"calibrated": traces["calibrated"], "uncalibrated": traces["uncalibrated"], "summary": summary}
    yield (chips_html(traces["calibrated"]["tokens"], marks_cal), chips_html(traces["uncalibrated"]["tokens"], marks_unc),
           summary_markdown(summary), result)


def _shares_plot(result: dict[str, Any] | None) -> Any:
    if not result or not result.get("summary"):
        return empty_figure("Axis shares of both runs appear here.")
    return shares_figure({name: result["summary"][name]["axis_shares"] for name in RUNS}, "Run weight per axis (mean over generated tokens)")


def compare_downloads(result: dict[str, Any] | None, worth: str | None) -> list[Any]:
    """The finished comparison for slides (HTML, PNG: both runs side by side) and as data (CSV, JSON); hidden
    until a comparison is complete."""
    if not result or not result.get("summary"):
        return download_updates(None)
    panels = [("Calibrated routing", result["calibrated"]), ("Uncalibrated routing (raw softmax)", result["uncalibrated"])]
    return download_updates(write_run_downloads("alignx-compare", panels, "AlignX Demo · Calibrated vs uncalibrated", result,
                                                figures=[_shares_plot(result)], notice=worth))


SPLIT_TITLES = {"eval": "Evaluation split", "xstest_shifted": "Shifted: XSTest",
                "ood": "Out of distribution: " + ", ".join(OOD_SLICE_NAMES[name] for name in UNSEEN_SLICES)}
"""Titles of the reliability data's held-out sets (the "ood" split pools the slices every bundle never saw)."""
SPLIT_WORDS = {"eval": "the evaluation split's prompts", "xstest_shifted": "XSTest's prompts (a shifted set)",
               "ood": "prompts of sources no training or calibration step saw"}


def reliability_sentence(variants: dict[str, dict[str, Any]], where: str) -> str:
    """How to read one reliability diagram, with its own numbers: which routing has the lower ECE, by how much."""
    ece = {name: data["prompt_metrics"]["ece"] for name, data in variants.items()}
    if set(ece) != set(RUNS):
        return f"{where}: " + ", ".join(f"{name} ECE {v:.3f}" for name, v in ece.items()) + " (lower is better)."
    cal, unc = ece["calibrated"], ece["uncalibrated"]
    if round(cal, 3) == round(unc, 3):
        verdict = f"both routings have the same ECE ({cal:.3f})"
    else:
        low, high = ("calibrated", "uncalibrated") if cal < unc else ("uncalibrated", "calibrated")
        verdict = (f"**{low}** routing is better calibrated here: ECE {min(cal, unc):.3f} against {max(cal, unc):.3f} "
                   f"{high}, {abs(cal - unc):.3f} lower")
    why = ""
    metrics = variants["calibrated"]["prompt_metrics"]
    if cal > unc and "mean_confidence" in metrics and "accuracy" in metrics:
        over = metrics["mean_confidence"] > metrics["accuracy"]
        why = (f" Calibrated routing is {'over' if over else 'under'}confident here (mean confidence "
               f"{metrics['mean_confidence']:.2f}, accuracy {metrics['accuracy']:.2f}): "
               + ("the calibration was fitted on the calibration split's prompts, and on prompts unlike them it "
                  "sharpens too much." if over else
                  "calibration acts on each token, and the rightly unsure weights of a prompt's early tokens "
                  "flatten the prompt's average."))
    return (f"{where} ({metrics['n']} prompts): {verdict} "
            f"(ECE = mean gap between confidence and accuracy over the bins; lower is better).{why}")


def intro_markdown(reliability: dict[str, Any] | None) -> str:
    """The tab's opening: what you are looking at, what to notice, and what calibration does on this model (from
    the precomputed reliability data: ECE calibrated vs raw on each held-out set)."""
    text = ("**What you are looking at:** the same prompt and seed, run twice — once with the calibrated router, once "
            "with the raw router. **What to notice:** words outlined in red are where calibration changed which expert "
            "leads; calibration should make the router's confidence match how often it is right.")
    if not reliability:
        return text
    parts = []
    for split, variants in reliability["splits"].items():
        if set(variants) >= set(RUNS):
            cal, unc = (variants[name]["prompt_metrics"]["ece"] for name in RUNS)
            verdict = "closer to" if cal < unc else "further from"
            parts.append(f"on {SPLIT_WORDS.get(split, split)} calibration brings confidence "
                         f"{verdict} accuracy (ECE {unc:.3f} raw → {cal:.3f} calibrated)")
    return text + (f" **On this model:** {'; '.join(parts)}." if parts else "")


def build_compare_tab(key: int, artefacts: Artefacts, worth: str | None = None, axes: Sequence[str] = AXES) -> LinkTarget:
    """The components and events of the calibrated-vs-uncalibrated tab, for a model with these `axes` (the shipped
    reliability diagrams and first prompt are the HHH bundle's: a model of other axes gets neither)."""
    hhh = is_hhh(axes)
    data = artefacts.get("reliability") if hhh else None
    gr.Markdown(intro_markdown(data), elem_id="compare-intro")
    gr.HTML(legend_html(flips=True, axes=axes))
    with gr.Row():
        with gr.Column(scale=2, min_width=300):
            first = "Do vaccines cause autism?" if hhh else ""
            prompt = gr.Textbox(label="Prompt", lines=2, max_lines=6, value=first, elem_id="compare-prompt")
            with gr.Row():
                run_btn = gr.Button("Compare", variant="primary", elem_id="compare-run")
                stop_btn = gr.Button("Stop", variant="stop", elem_id="compare-stop")
        with gr.Column(scale=1, min_width=240):
            mode = gr.Radio(list(MODES), value="soft", label="Routing mode")
            cap = token_cap(key, several=True)
            max_new = gr.Slider(1, cap, value=min(32, cap), step=1, precision=0, label="Max new tokens",
                                info=f"up to {cap} for each of the two runs")
            do_sample = gr.Checkbox(False, label="Sample (same seed both ways)")
            temperature = gr.Slider(*TEMPERATURE_RANGE, value=1.0, step=0.05, label="Temperature")
            top_p = gr.Slider(*TOP_P_RANGE, value=1.0, step=0.05, label="Top-p")
            seed = gr.Number(0, precision=0, label="Seed")
    with gr.Row():
        with gr.Column(min_width=280):
            gr.Markdown("**Calibrated routing**")
            cal = gr.HTML(chips_html([], empty="—"), label="Calibrated chips HTML", elem_id="compare-calibrated")
        with gr.Column(min_width=280):
            gr.Markdown("**Uncalibrated routing** (raw softmax)")
            unc = gr.HTML(chips_html([], empty="—"), label="Uncalibrated chips HTML", elem_id="compare-uncalibrated")
    if worth:
        gr.HTML(notice_block(worth), elem_classes=["ax-worth-row"])
    link = LinkTarget({"prompt": prompt, "tokens": max_new, "sample": do_sample, "temperature": temperature, "top_p": top_p,
                       "seed": seed, "mode": mode}, "compare-run")
    copy_link_row(TAB, link)
    with gr.Row():
        summary = gr.Markdown(label="Summary", elem_classes=["ax-figures"], elem_id="compare-summary")
        with gr.Column(min_width=280):
            shares_plot = gr.Plot(_shares_plot(None), show_label=False, elem_classes=["ax-plot"])
            gr.Markdown("Bars: each expert's mean routing weight over the generated tokens of each run — where the two "
                        "runs' bars differ, calibration changed which expert shaped the answer.", elem_classes=["ax-caption"])
    downloads = download_row("compare")
    with gr.Accordion("Result (JSON, as returned by the API)", open=False):
        result = gr.JSON(label="Result")

    gr.Markdown("### Reliability of routing on held-out prompts\nEach point is a confidence bin: how often the router's top axis is the "
                "prompt's true axis, against how confident it was. On the diagonal = calibrated; below = over-confident.")
    if data is None:
        gr.HTML(notice_html(artefacts.notice("reliability") if hhh else
                            "the shipped reliability diagrams are the HHH bundle's; `analyze` a labelled file for this model's"))
    else:
        gr.Markdown(f"Source: {data['source']} · built by `{data['command']}` · model {data['model']}")
        with gr.Row():
            for split, variants in data["splits"].items():
                title = SPLIT_TITLES.get(split, split)
                with gr.Column(min_width=300):
                    gr.Plot(reliability_figure(variants, title), show_label=False, elem_classes=["ax-plot"])
                    gr.Markdown(reliability_sentence(variants, title), elem_classes=["ax-caption", "ax-reliability"])

    def compare(prompt: str, max_new_tokens: int, do_sample: bool, temperature: float, top_p: float, seed: int,
                mode: str, request: gr.Request) -> Iterator[tuple[str, str, str, Any]]:
        run = partial(stream_compare, key, prompt, max_new_tokens, do_sample, temperature, top_p, seed, mode)
        yield from stops.guarded(request, TAB, run)

    run_btn.click(stops.arming(TAB), api_visibility="private", queue=False, show_progress="hidden").then(
        compare, inputs=[prompt, max_new, do_sample, temperature, top_p, seed, mode], outputs=[cal, unc, summary, result],
        api_name="compare", **MODEL_EVENT,
        api_description="Generate the prompt with calibrated and uncalibrated routing (same seed); returns both traces and a summary.")
    stop_btn.click(stops.stopper(TAB), api_visibility="private", queue=False, show_progress="hidden")
    result.change(visitor_errors(_shares_plot), inputs=result, outputs=shares_plot, api_visibility="private", show_progress="hidden")
    result.change(visitor_errors(lambda r: compare_downloads(r, worth)), inputs=result, outputs=downloads, api_visibility="private",
                  show_progress="hidden")
    return link
