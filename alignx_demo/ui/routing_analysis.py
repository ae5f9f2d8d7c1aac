"""Routing analysis tab: route a whole prompt set and see where the router fails.

The named endpoint `analyze` takes a prompt file (CSV, JSONL or JSON: a `prompt` column, an optional
`axis` label per row, any further columns to slice by) and whether to calibrate, and returns (summary
markdown, the analysis JSON of `analysis.failures.analyze_prompts`). Bad rows are left out, each named
in one sentence; the rest is analysed, in batches with a progress bar, up to the operator's
`max_analysis_rows` and `request_seconds`. The held-out slices the project ships (`routing_analysis.json`,
built by `precompute`) show without any model work.

The page opens on what it shows and what the first shipped slice shows on this model (computed), then draws
the result: a confusion matrix (true × routed axis) and the misrouted prompts, most confident first — a click on
one runs it in Live routing; accuracy and ECE per slice with 95 % bootstrap intervals and the mean settle
position per axis are folded under Details. The result downloads as CSV and JSON.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from alignx_demo.analysis.artefacts import HOW_TO_BUILD, Artefacts
from alignx_demo.analysis.failures import analysis_csv, analyze_prompts, level_figures
from alignx_demo.analysis.prompt_files import parse_prompt_file
from alignx_demo.config import RoutingSettings
from alignx_demo.ui.chips import notice_html
from alignx_demo.ui.exports import write_downloads
from alignx_demo.ui.plots import confusion_figure
from alignx_demo.ui.results import scroll_hint
from alignx_demo.ui.served import MODEL_EVENT, gpu, gpu_seconds, limits_of, served_model
from alignx_demo.ui.theme import AXIS_LABELS
from alignx_demo.ui.validation import GenerationError, flag, visitor_errors

SHOWN_PROBLEMS = 5
"""Bad-row sentences shown in the summary (all of them are in the JSON's "problems")."""
SHOWN_ROWS = 200
"""Rows of the misrouted table (all of them are in the downloads)."""
TABLE_HEADERS = ["row", "true → routed", "prompt"]
Progress = Callable[[int, int], Any]


def plain(text: Any) -> str:
    """Text from a file or a model, safe inside Markdown: on one line (so nothing starts a heading or a list),
    HTML escaped, and the characters of emphasis, code, links and tables backslashed."""
    escaped = html.escape(" ".join(str(text).split()), quote=False)
    return re.sub(r"([\\`*_\[\]|~])", r"\\\1", escaped)


def _ci(ci: list[float] | None) -> str:
    return f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""


# the model work ---------------------------------------------------------------------------------------------

@gpu(duration=gpu_seconds)
def analyze_plain(key: int, rows: list[dict[str, Any]], calibrated: bool, progress: Progress | None = None,
                  rejected: list[str] | None = None) -> dict[str, Any]:
    """`analyze_prompts` on the served model under the operator's row and time limits (plain data in and out):
    both routing levels, the file's rejected rows counted (`rejected`, one sentence each)."""
    context = served_model(key)
    limits = limits_of(key)
    return analyze_prompts(context.loaded, None, rows, routing=RoutingSettings(mode="soft", calibrated=calibrated),
                           max_rows=limits.max_analysis_rows, max_seconds=limits.request_seconds, progress=progress,
                           model_name=context.name, rejected=rejected or ())


def uploaded(prompts_file: Any) -> tuple[Path, str]:
    """(path, file name) of the uploaded prompt file as the API delivers it (a file object, or its path)."""
    if isinstance(prompts_file, dict) and isinstance(prompts_file.get("path"), str):
        path = Path(prompts_file["path"])
        return path, str(prompts_file.get("orig_name") or path.name)
    if isinstance(prompts_file, str) and prompts_file:
        return Path(prompts_file), Path(prompts_file).name
    raise GenerationError("upload a prompt file first: CSV or JSONL with a `prompt` column and an optional `axis` column")


def analyze(key: int, prompts_file: Any, calibrated: Any, progress: Progress | None = None) -> tuple[str, dict[str, Any]]:
    """Parse an uploaded prompt file and analyse its good rows; (summary markdown, analysis JSON)."""
    calibrated = flag(calibrated, "calibrated")
    path, name = uploaded(prompts_file)
    try:
        rows, problems = parse_prompt_file(path, name=name)
    except ValueError as err:
        raise GenerationError(str(err).replace(str(path), name)) from None
    result = analyze_plain(key, rows, calibrated, progress, rejected=problems)
    result["prompts_file"] = name
    return summary_markdown(result), result


# drawing a result -------------------------------------------------------------------------------------------

def summary_markdown(result: dict[str, Any]) -> str:
    """What was analysed, what was left out (one sentence per bad row), and the headline figures."""
    routing = result["routing"]
    how = ("calibrated" if routing["calibrated"] else "uncalibrated") + f" {routing['mode']} routing"
    source = f" of **{plain(result['prompts_file'])}**" if result.get("prompts_file") else ""
    given = result["rows_given"]
    lines = [f"Analysed **{result['analysed']} of {given} rows**{source} in {result['seconds']:.1f} s "
             f"({how}; a prompt is routed by the mean of its routing weights over its tokens and layers)."]
    problems = result.get("problems") or []
    for problem in problems[:SHOWN_PROBLEMS]:
        lines.append(f"⚠ {plain(problem)}")
    if len(problems) > SHOWN_PROBLEMS:
        lines.append(f"⚠ …and {len(problems) - SHOWN_PROBLEMS} more rows left out (all listed in the JSON download).")
    for notice in result.get("notices") or []:
        lines.append(f"⚠ {plain(notice)}")
    figures = level_figures(result) if "levels" in result else []
    if any(f.get("skipped") == "no labelled rows" for f in figures):
        lines.append("No row has an axis label, so there is no accuracy or confusion matrix: add an `axis` column "
                     "(helpful, harmless or honest) to measure them.")
    for f in figures:
        if f.get("skipped"):
            if f["skipped"] != "no labelled rows":
                lines.append(f"{f['level'].capitalize()} level: {plain(f['skipped'])}.")
            continue
        debiased = f" (debiased {f['ece_debiased']:.3f})" if f.get("ece_debiased") is not None else ""
        lines.append(f"**{f['level'].capitalize()} level** ({plain(f['what'])}): **accuracy {f['accuracy']:.2f}"
                     f"{_ci(f['accuracy_ci95'])}, ECE {f['ece']:.3f}{_ci(f['ece_ci95'])}**{debiased} on {f['n']} labelled "
                     f"prompts, mean confidence {f['mean_confidence']:.2f}; {f['misrouted']} misrouted.")
    if figures:
        lines.append("Intervals: 95 %, Wilson for accuracy, BCa bootstrap for ECE. The table below lists the prompt "
                     "level's misrouted prompts, most confident first.")
    return "\n\n".join(lines)


def slices_markdown(result: dict[str, Any]) -> str:
    """Accuracy and ECE with intervals for every slice: all, each true axis, each small extra column."""
    slices = result["levels"]["prompt"]["slices"]
    if not slices:
        return ""
    rows = ["| slice | prompts | accuracy [95 % CI] | ECE [95 % CI] | mean confidence |", "|---|---|---|---|---|"]
    for group, values in slices.items():
        for value, s in values.items():
            name = ("all labelled prompts" if group == "all" else
                    f"true axis: {AXIS_LABELS.get(value, plain(value))}" if group == "axis" else f"{plain(group)}: {plain(value)}")
            rows.append(f"| {name} | {s['n']} | {s['accuracy']:.2f}{_ci(s['accuracy_ci95'])} | {s['ece']:.3f}"
                        f"{_ci(s['ece_ci95'])} | {s['mean_confidence']:.2f} |")
    return "\n".join(rows)


def settle_markdown(result: dict[str, Any]) -> str:
    """Mean settle position per true axis (where prompt-level routing stops changing), as a sentence and a table."""
    settle = result.get("settle") or {}
    overall = settle.get("all")
    if not overall:
        return ""
    rows = [f"On average routing commits at prompt token **{overall['mean_index'] + 1:.1f} of {overall['mean_tokens']:.1f}** "
            f"({overall['mean_fraction']:.0%} of the way through the prompt; {plain(result['definitions']['settle'])}).", "",
            "| prompts | n | settles at token (mean) | prompt tokens (mean) | fraction of the prompt |", "|---|---|---|---|---|"]
    for axis, s in settle.items():
        name = "all" if axis == "all" else f"true axis: {AXIS_LABELS[axis]}"
        rows.append(f"| {name} | {s['n']} | {s['mean_index'] + 1:.1f} | {s['mean_tokens']:.1f} | {s['mean_fraction']:.0%} |")
    return "\n".join(rows)


def table_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows to look at: the misrouted ones, most confident first; without labels every row, least confident first."""
    level = result["levels"]["prompt"]
    if level["labelled"]:
        return level["misrouted"][:SHOWN_ROWS]
    return sorted(result["rows"], key=lambda r: r["confidence"])[:SHOWN_ROWS]


def table_value(rows: list[dict[str, Any]]) -> dict[str, Any]:
    data = [[r["row"], f"{AXIS_LABELS[r['axis']] if r['axis'] else '—'} → {AXIS_LABELS[r['routed']]} ({r['confidence']:.2f})",
             r["prompt"]] for r in rows]
    return {"headers": TABLE_HEADERS, "data": data}


def views(result: dict[str, Any] | None) -> tuple[Any, ...]:
    """(confusion plot, slices markdown, settle markdown, table, table rows) of a result."""
    if not result:
        return confusion_figure(None), "", "", table_value([]), []
    rows = table_rows(result)
    level = result["levels"]["prompt"]
    how = "calibrated" if result["routing"]["calibrated"] else "uncalibrated"
    return (confusion_figure(level["confusion"], f"True axis × routed axis ({level['labelled']} prompts, {how})"),
            slices_markdown(result), settle_markdown(result), table_value(rows), rows)


def downloads(result: dict[str, Any], keep: bool = False) -> tuple[str, str]:
    """The CSV (one row per prompt) and JSON (everything) of a result, written for download."""
    return write_downloads("alignx-analysis", analysis_csv(result), result, keep=keep)


def render(result: dict[str, Any] | None) -> tuple[Any, ...]:
    """`views` of a result, then its CSV and JSON downloads (hidden without a result)."""
    if not result:
        hidden = gr.File(value=None, visible=False)
        return (*views(None), hidden, hidden)
    csv_path, json_path = downloads(result)
    return (*views(result), gr.File(value=csv_path, visible=True), gr.File(value=json_path, visible=True))


def shipped(artefacts: Artefacts) -> dict[str, dict[str, Any]]:
    """The slices `precompute` ships: {name: {"label", "what", "result"}}."""
    data = artefacts.get("analysis") or {}
    slices = data.get("slices")
    return {k: v for k, v in slices.items() if isinstance(v, dict) and "result" in v} if isinstance(slices, dict) else {}


@dataclass
class _Inputs:
    """What an analysis reads: the uploaded file and calibration (the Analyze button runs it), or a shipped slice."""

    prompts_file: gr.File
    calibrated: gr.Checkbox
    run_btn: gr.Button
    pick: gr.Dropdown


@dataclass
class _Views:
    """What a result draws: summary, confusion matrix, slices and settle tables, the misrouted table and its
    rows, the downloads, and the result JSON itself."""

    summary: gr.Markdown
    confusion: gr.Plot
    slices_md: gr.Markdown
    settle_md: gr.Markdown
    table: gr.Dataframe
    csv_file: gr.File
    json_file: gr.File
    result: gr.JSON
    rows: gr.State

    def drawn(self) -> list[Any]:
        """The outputs of `render`, in its order."""
        return [self.confusion, self.slices_md, self.settle_md, self.table, self.rows, self.csv_file, self.json_file]


def _inputs(key: int, artefacts: Artefacts, slices: dict[str, dict[str, Any]]) -> _Inputs:
    """The upload with its calibration and Analyze button, beside the shipped slices (or a notice why there are none)."""
    with gr.Row():
        with gr.Column(scale=3, min_width=280):
            prompts_file = gr.File(label="Prompt file (CSV, JSONL or JSON)", file_types=[".csv", ".jsonl", ".json", ".ndjson"],
                                   elem_id="analysis-file")
            with gr.Row():
                calibrated = gr.Checkbox(True, label="Calibrated routing", min_width=160)
                run_btn = gr.Button("Analyze", variant="primary", elem_id="analysis-run", min_width=160)
        with gr.Column(scale=2, min_width=260):
            choices = [(v["label"], k) for k, v in slices.items()]
            pick = gr.Dropdown(choices, value=choices[0][1] if choices else None, label="…or a slice this project ships",
                               visible=bool(choices), elem_id="analysis-shipped")
            if not slices:
                gr.HTML(notice_html(artefacts.notice("analysis")
                                    or f"No shipped slices in the routing analysis file; rebuild it with `{HOW_TO_BUILD}`."))
    return _Inputs(prompts_file, calibrated, run_btn, pick)


def _provenance(key: int, artefacts: Artefacts, slices: dict[str, dict[str, Any]]) -> str:
    """For the Details fold: this server's limits, the command without them, and what the shipped slices are."""
    limits = limits_of(key)
    text = (f"At most {limits.max_analysis_rows:,} rows and {limits.request_seconds:g} s per file on this server; the "
            "command line has no limit: `python -m alignx_demo analyze --prompts FILE --out FILE.json`.")
    if slices:
        data = artefacts.get("analysis")
        what = next(iter(slices.values()))["what"]
        text += f"\n\nShipped slices: {what}. Built by `{data['command']}` for {plain(data['model'])}."
    return text


def _views(first: dict[str, Any] | None, provenance: str) -> _Views:
    """The result's summary, plots, tables, downloads and JSON, drawn from `first` (a shipped slice) if any; the
    slice tables, settle table and `provenance` folded under Details."""
    initial = views(first)
    files = downloads(first, keep=True) if first else (None, None)
    with gr.Row():
        with gr.Column(min_width=280):
            summary = gr.Markdown(summary_markdown(first) if first else "", label="Summary", elem_id="analysis-summary")
        with gr.Column(min_width=280):
            confusion = gr.Plot(initial[0], show_label=False, elem_id="analysis-confusion", elem_classes=["ax-plot", "ax-cells"])
            gr.Markdown("Rows: the axis each prompt was labelled with; columns: the expert the router weighs most over "
                        "the prompt. The diagonal is right; colour is the share of the row.", elem_classes=["ax-caption"])
    gr.Markdown("#### Misrouted prompts, most confident mistakes first\nEach row: the file's row number, the axis it was "
                "labelled with → the expert the router chose (its weight). Click a row to run that prompt in Live routing "
                "(with this analysis's calibration).", elem_classes=["ax-caption"])
    table = gr.Dataframe(initial[3], headers=TABLE_HEADERS, datatype=["number", "str", "str"],
                         interactive=False, wrap=True, max_height=420, column_widths=["12%", "28%", "60%"],
                         elem_id="analysis-misrouted")
    with gr.Row():
        csv_file = gr.File(files[0], label="Download analysis (CSV)", interactive=False, visible=bool(first), min_width=260,
                           elem_id="analysis-csv", elem_classes=["ax-download"])
        json_file = gr.File(files[1], label="Download analysis (JSON)", interactive=False, visible=bool(first), min_width=260,
                            elem_id="analysis-json", elem_classes=["ax-download"])
    with gr.Accordion("Details: accuracy and calibration per slice with intervals, where routing commits, and how "
                      "this was made", open=False, elem_id="analysis-details"):
        scroll_hint()
        slices_md = gr.Markdown(initial[1], elem_classes=["ax-table"], elem_id="analysis-slices")
        settle_md = gr.Markdown(initial[2], elem_classes=["ax-table"], elem_id="analysis-settle")
        gr.Markdown(provenance, elem_classes=["ax-caption"])
    with gr.Accordion("Analysis (JSON, as returned by the API)", open=False):
        result = gr.JSON(first, label="Analysis")
    return _Views(summary, confusion, slices_md, settle_md, table, csv_file, json_file, result, gr.State(initial[4]))


LOOKING_AT = ("**What you are looking at:** where the router goes wrong over a whole set of prompts — for each prompt, "
              "the axis it was written for (the matrix's rows) against the expert the router weighs most (its "
              "columns), and below, the prompts it got wrong, most confident first. **What to notice:** the cells off "
              "the diagonal, which say which axis is taken for which.")
TRY_IT = ("**Try it:** upload a CSV or JSONL file with a `prompt` column, an optional `axis` column (helpful, harmless or "
          "honest) and any further columns to slice by (e.g. `source`), or pick another shipped slice; a click on a "
          "misrouted prompt runs it in Live routing.")


def _accuracy(result: dict[str, Any], level: str) -> float | None:
    """A result's accuracy over all labelled prompts at one routing level, or None where it was not measured."""
    overall = ((result["levels"].get(level) or {}).get("slices") or {}).get("all", {}).get("all")
    return overall["accuracy"] if overall else None


def _worst_and_mistake(level: dict[str, Any]) -> str:
    """The slice with the lowest accuracy and the commonest confusion (true axis → routed axis) of a level, in words."""
    slices = [(g, v, s) for g, values in level["slices"].items() if g != "all" for v, s in values.items()]
    if not slices:
        return ""
    group, value, worst = min(slices, key=lambda c: c[2]["accuracy"])
    name = f"{AXIS_LABELS.get(value, plain(value))} prompts" if group == "axis" else f"the slice {plain(group)} = {plain(value)}"
    text = f" The worst slice is {name} at {worst['accuracy']:.0%}"
    confusion = level["confusion"]
    cells = [(n, i, j) for i, row in enumerate(confusion["matrix"]) for j, n in enumerate(row) if i != j]
    n, i, j = max(cells, default=(0, 0, 0))
    if n:
        true, routed = confusion["true"][i], confusion["routed"][j]
        text += (f"; the commonest mistake is {AXIS_LABELS[true]} prompts sent to {AXIS_LABELS[routed]} "
                 f"({n} of {sum(confusion['matrix'][i])})")
    return text + "."


def on_this_model(slices: dict[str, dict[str, Any]], notice: str | None) -> str:
    """What the first shipped slice shows on the served model, read from `routing_analysis.json` (or why not)."""
    if not slices:
        return f"**On this model:** no shipped slice to show — {notice or 'the routing analysis file has no slices'}"
    first = next(iter(slices.values()))
    result = first["result"]
    level = result["levels"]["prompt"]
    accuracy = _accuracy(result, "prompt")
    if accuracy is None:
        return f"**On this model**, in the shipped slice *{plain(first['label'])}*: no axis labels, so no accuracy."
    text = (f"**On this model**, in the shipped slice *{plain(first['label'])}*: the router sends {accuracy:.0%} of the {level['labelled']} "
            "prompts to their own axis's expert, judged by its weights over the prompt's tokens")
    calibrated = result["routing"]["calibrated"]
    other = next((v["result"] for v in slices.values() if v["result"]["routing"]["calibrated"] != calibrated), None)
    if other is not None and _accuracy(other, "prompt") is not None:
        text += f" ({_accuracy(other, 'prompt'):.0%} {'un' if calibrated else ''}calibrated)"
    generated = _accuracy(result, "generation")
    text += (f", and {generated:.0%} by its weights over the tokens it generates." if generated is not None else
             "; routing over generated tokens is not measured in this slice.")
    return text + _worst_and_mistake(level)


def intro_markdown(slices: dict[str, dict[str, Any]], notice: str | None) -> str:
    """The tab's opening: what it shows, what to notice, what the shipped slice shows, and how to try a file."""
    return "\n\n".join((LOOKING_AT, on_this_model(slices, notice), TRY_IT))


def build_analysis_tab(key: int, artefacts: Artefacts, tabs: gr.Tabs, live: Any) -> None:
    """The tab's components and events; `live` is the live tab's handles (`live.LiveTab`), `tabs` the page's tabs."""
    slices = shipped(artefacts)
    gr.Markdown(intro_markdown(slices, artefacts.notice("analysis")), elem_id="analysis-intro")
    inputs = _inputs(key, artefacts, slices)
    shown = _views(next(iter(slices.values()))["result"] if slices else None, _provenance(key, artefacts, slices))
    _wire(key, slices, inputs, shown, tabs, live)


def _wire(key: int, slices: dict[str, dict[str, Any]], inputs: _Inputs, shown: _Views, tabs: gr.Tabs, live: Any) -> None:
    """Analyze (the named endpoint `analyze`), opening a shipped slice, drawing a result, and a click on a
    misrouted row running its prompt in Live routing."""
    def run_analysis(prompts_file: Any, calibrated: bool, progress: gr.Progress = gr.Progress()) -> tuple[str, dict[str, Any]]:
        return analyze(key, prompts_file, calibrated, lambda done, total: progress((done, total), desc="routing prompts",
                                                                                   unit="prompts"))

    def open_slice(name: str | None) -> tuple[Any, Any]:
        if name not in slices:
            return gr.skip(), gr.skip()
        chosen = slices[name]["result"]
        return summary_markdown(chosen), chosen

    def open_row(rows: list[dict[str, Any]], result: dict[str, Any] | None, evt: gr.SelectData) -> tuple[Any, ...]:
        index = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        if not rows or not isinstance(index, int) or not 0 <= index < len(rows):
            raise GenerationError("that row is not in the table any more; analyse again")
        calibrated_run = bool((result or {}).get("routing", {}).get("calibrated", True))
        return rows[index]["prompt"], calibrated_run, gr.Tabs(selected="live")

    inputs.run_btn.click(visitor_errors(run_analysis), inputs=[inputs.prompts_file, inputs.calibrated],
                         outputs=[shown.summary, shown.result], api_name="analyze",
                         api_description="Route every prompt of a CSV/JSONL file (optional axis label per row): (summary "
                                         "markdown, analysis JSON with the confusion matrix, accuracy and ECE per slice, "
                                         "misrouted rows, settle points).", **MODEL_EVENT)
    inputs.pick.change(visitor_errors(open_slice), inputs=inputs.pick, outputs=[shown.summary, shown.result],
                       api_visibility="private", queue=False)
    shown.result.change(visitor_errors(render), inputs=shown.result, outputs=shown.drawn(), api_visibility="private",
                        show_progress="hidden")
    opened = shown.table.select(visitor_errors(open_row), inputs=[shown.rows, shown.result],
                                outputs=[live.prompt, live.calibrated, tabs], api_visibility="private", queue=False)
    live.run_after(opened)
