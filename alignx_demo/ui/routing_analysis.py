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

Comparing with a second model: where the operator serves a second checkpoint beside the model (`build_analysis_tab`'s
`against`), the named endpoint `analyze_against` (prompt file, calibrated, shipped slice) routes the uploaded file —
or, without one, the shipped slice chosen — with both, A the served model and B the second one, and returns (summary
markdown, the comparison JSON of `analysis.failures.compare_models` with both analyses under "analyses", as
`analyze --against` writes it). The page says in plain words how accuracy and ECE moved, lists the prompts whose
routed axis or correctness changed, folds McNemar's test and the paired intervals under Details, and offers the
comparison as CSV and JSON. Without a second model the section is one sentence saying how the operator adds one;
a visitor can never name a model.
"""

from __future__ import annotations

import html
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from alignx_demo.analysis.artefacts import HOW_TO_BUILD, Artefacts
from alignx_demo.analysis.failures import (
    DEFAULT_GENERATE_TOKENS,
    analysis_csv,
    analyze_prompts,
    compare_models,
    comparison_csv,
    difference_text,
    level_figures,
)
from alignx_demo.analysis.prompt_files import parse_prompt_file
from alignx_demo.config import RoutingSettings, is_hhh
from alignx_demo.serving import ModelContext
from alignx_demo.ui.chips import notice_html
from alignx_demo.ui.exports import write_downloads
from alignx_demo.ui.plots import confusion_figure
from alignx_demo.ui.results import scroll_hint
from alignx_demo.ui.served import (
    MODEL_EVENT,
    SERVED,
    gpu,
    gpu_seconds,
    limits_of,
    model_ready,
    serve,
    served_axes,
    served_model,
)
from alignx_demo.ui.theme import AXIS_LABELS
from alignx_demo.ui.validation import GenerationError, flag, visitor_errors

SHOWN_PROBLEMS = 5
"""Bad-row sentences shown in the summary (all of them are in the JSON's "problems")."""
SHOWN_ROWS = 200
"""Rows of the misrouted table (all of them are in the downloads)."""
TABLE_HEADERS = ["row", "true → routed", "prompt"]
LEVEL_CHOICES = [("Prompt level", "prompt"), ("Generation level", "generation")]
"""The level the matrix, the slice table and the misrouted table show (`analysis.failures.LEVELS`)."""
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
        rows, problems = parse_prompt_file(path, name=name, axes=served_axes(key))
    except ValueError as err:
        raise GenerationError(str(err).replace(str(path), name)) from None
    result = analyze_plain(key, rows, calibrated, progress, rejected=problems)
    result["prompts_file"] = name
    return summary_markdown(result), result


# comparing with a second model --------------------------------------------------------------------------------

NO_SECOND_MODEL = ("No second model to compare with: the operator can start the app with `--compare-model DIR` (or "
                   "ALIGNX_COMPARE_MODEL=DIR) to compare the served model with another checkpoint on the same prompts.")
"""The one sentence the comparison section (and its handler) gives when the operator configured no second model."""
Stage = Callable[[str, int, int], Any]
"""Progress of a comparison: (side "A" or "B", rows done, rows of that side)."""


def second_model_notice(against: ModelContext | None, axes: tuple[str, ...] | None = None) -> str | None:
    """Why the comparison cannot run on this server (no second model configured, it did not load, or it routes over
    other axes than the served model's `axes`); None when it can."""
    if against is None:
        return NO_SECOND_MODEL
    if against.loaded is None:
        return f"The second model (B) is not loaded, so there is nothing to compare with: {against.problem or 'no model loaded'}"
    if axes is not None and against.loaded.mocae.axes != axes:
        return (f"The second model (B) routes over other axes ({', '.join(against.loaded.mocae.axes)}) than the served "
                f"model ({', '.join(axes)}), so its routing cannot be paired with the served model's.")
    return None


def second_model(against_key: int | None, axes: tuple[str, ...] | None = None) -> ModelContext:
    """The operator's second model by its `serve` key; a GenerationError with `second_model_notice` when there is none
    (or it routes over other axes than `axes`)."""
    context = SERVED.get(against_key) if against_key is not None else None
    notice = second_model_notice(context, axes)
    if notice:
        raise GenerationError(notice)
    return context


def slice_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The prompt rows of a shipped slice's analysis, as `parse_prompt_file` gives them (row numbers kept)."""
    return [{"row": r["row"], "prompt": r["prompt"], "axis": r["axis"], "extra": dict(r.get("extra") or {}), "notices": [],
             "changes": list(r.get("changes") or [])} for r in result["rows"]]


def _side(progress: Stage | None, side: str) -> Progress | None:
    return None if progress is None else (lambda done, total: progress(side, done, total))


@gpu(duration=gpu_seconds)
def compare_plain(key: int, against_key: int | None, rows: list[dict[str, Any]], calibrated: bool,
                  generate_tokens: int = DEFAULT_GENERATE_TOKENS, progress: Stage | None = None,
                  rejected: list[str] | None = None) -> dict[str, Any]:
    """The served model (A) against the operator's second model (B) on the same rows, under one request's limits
    (plain data in and out): A routes up to `max_analysis_rows` rows in half of `request_seconds`, B the rows A
    analysed in what is left, then `compare_models` pairs them; both analyses are under "analyses"."""
    context_a = served_model(key)
    context_b = second_model(against_key, context_a.loaded.mocae.axes)
    limits = limits_of(key)
    started = time.monotonic()
    settings = {"routing": RoutingSettings(mode="soft", calibrated=calibrated), "generate_tokens": generate_tokens,
                "max_rows": limits.max_analysis_rows, "rejected": rejected or ()}
    result_a = analyze_prompts(context_a.loaded, None, rows, max_seconds=limits.request_seconds / 2,
                               progress=_side(progress, "A"), model_name=context_a.name, **settings)
    done = {r["row"] for r in result_a["rows"]}
    left = max(limits.request_seconds - (time.monotonic() - started), 0.1)
    result_b = analyze_prompts(context_b.loaded, None, [r for r in rows if r["row"] in done], max_seconds=left,
                               progress=_side(progress, "B"), model_name=context_b.name, **settings)
    try:
        comparison = compare_models(result_a, result_b)
    except ValueError as err:  # e.g. the two tokenizers cut a long prompt differently
        raise GenerationError(f"The two models cannot be compared on these prompts: {err}.") from None
    comparison["analyses"] = {"a": result_a, "b": result_b}
    return comparison


def compare_against(key: int, against_key: int | None, prompts_file: Any, calibrated: Any,
                    shipped_slice: dict[str, Any] | None = None, progress: Stage | None = None) -> tuple[str, dict[str, Any]]:
    """The served model against the operator's second model on an uploaded prompt file (with `calibrated` routing) or,
    without one, on a shipped slice's prompts (`shipped_slice`: {"label", "result"}, under that slice's own
    routing); (summary markdown, comparison JSON)."""
    second_model(against_key, served_axes(key))  # the notice first, before any file is read
    calibrated = flag(calibrated, "calibrated")
    if prompts_file or shipped_slice is None:
        path, name = uploaded(prompts_file)
        try:
            rows, problems = parse_prompt_file(path, name=name, axes=served_axes(key))
        except ValueError as err:
            raise GenerationError(str(err).replace(str(path), name)) from None
        comparison = compare_plain(key, against_key, rows, calibrated, DEFAULT_GENERATE_TOKENS, progress, problems)
    else:
        result, name = shipped_slice["result"], shipped_slice["label"]
        if result.get("prompts_redacted"):
            raise GenerationError(f"{name} ships its prompts' data ids, not their text, so the second model cannot route "
                                  "them; upload the prompts as a file instead")
        comparison = compare_plain(key, against_key, slice_rows(result), bool(result["routing"]["calibrated"]),
                                   int(result.get("generate_tokens") or 0), progress)
    comparison["prompts_file"] = name
    return comparison_markdown(comparison), comparison


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
    if result.get("prompts_redacted"):
        lines.append(f"ℹ {plain(result['prompts_redacted'])}.")
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
        lines.append("Intervals: 95 %, Wilson for accuracy, BCa bootstrap for ECE. The matrix and the table below "
                     "show the level chosen above them (prompt level first), misrouted prompts most confident first.")
    return "\n\n".join(lines)


def shown_level(result: dict[str, Any], level: str) -> str:
    """The level to draw: the one asked for where the result has it, else the prompt level (always measured)."""
    return level if level in result["levels"] else "prompt"


def slices_markdown(result: dict[str, Any], level: str = "prompt") -> str:
    """Accuracy and ECE with intervals at one level for every slice: all, each true axis, each small extra column."""
    slices = result["levels"][shown_level(result, level)]["slices"]
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


def table_rows(result: dict[str, Any], level: str = "prompt") -> list[dict[str, Any]]:
    """The rows to look at: the level's misrouted ones, most confident first; without labels every row (prompt
    level), least confident first."""
    summary = result["levels"][shown_level(result, level)]
    if summary["labelled"]:
        return summary["misrouted"][:SHOWN_ROWS]
    return sorted(result["rows"], key=lambda r: r["confidence"])[:SHOWN_ROWS]


def table_value(rows: list[dict[str, Any]]) -> dict[str, Any]:
    data = [[r["row"], f"{AXIS_LABELS[r['axis']] if r['axis'] else '—'} → {AXIS_LABELS[r['routed']]} ({r['confidence']:.2f})",
             r["prompt"]] for r in rows]
    return {"headers": TABLE_HEADERS, "data": data}


def views(result: dict[str, Any] | None, level: str = "prompt") -> tuple[Any, ...]:
    """(confusion plot, slices markdown, settle markdown, table, table rows) of a result at one routing level."""
    if not result:
        return confusion_figure(None), "", "", table_value([]), []
    level = shown_level(result, level)
    rows = table_rows(result, level)
    summary = result["levels"][level]
    how = "calibrated" if result["routing"]["calibrated"] else "uncalibrated"
    return (confusion_figure(summary["confusion"], f"True axis × routed axis, {level} level ({summary['labelled']} prompts, {how})"),
            slices_markdown(result, level), settle_markdown(result), table_value(rows), rows)


def downloads(result: dict[str, Any], keep: bool = False) -> tuple[str, str]:
    """The CSV (one row per prompt) and JSON (everything) of a result, written for download."""
    return write_downloads("alignx-analysis", analysis_csv(result), result, keep=keep)


def render(result: dict[str, Any] | None, level: str = "prompt") -> tuple[Any, ...]:
    """`views` of a result at a level, then its CSV and JSON downloads (hidden without a result)."""
    if not result:
        hidden = gr.File(value=None, visible=False)
        return (*views(None), hidden, hidden)
    csv_path, json_path = downloads(result)
    return (*views(result, level), gr.File(value=csv_path, visible=True), gr.File(value=json_path, visible=True))


CHANGE_HEADERS = ["row", "true axis", "routed A → B", "confidence A → B", "correct A → B", "prompt"]
CHANGE_ORDER = {"became wrong": 0, "became correct": 1}
"""Order of the changes table: prompts that became wrong first, then those that became correct, then the rest."""


def _level_name(level: str) -> str:
    return f"{level.capitalize()} level"


def _difference(d: dict[str, Any], method: str | None = None) -> str:
    """`difference_text`, naming the interval's method when it has one."""
    method = method or d.get("ci_method")
    return difference_text(d) + (f" ({method})" if d.get("ci95") and method else "")


def _chance(p: float, discordant: int) -> str:
    if not discordant:
        return "no labelled prompt changed between right and wrong"
    if p < 0.05:
        return "a change this large would be rare if the two models were equally accurate"
    return "a change this small could well be chance"


def comparison_markdown(comparison: dict[str, Any]) -> str:
    """A comparison in plain words: which models on which prompts, then per level how accuracy (with McNemar's p) and
    ECE (with the paired bootstrap interval of B − A) moved and how often the routed axis changed; its notices."""
    a, b = plain(comparison["a"]["model"] or "A"), plain(comparison["b"]["model"] or "B")
    routing = comparison["a"].get("routing") or {}
    how = ("calibrated" if routing.get("calibrated", True) else "uncalibrated") + " soft routing"
    source = f" of **{plain(comparison['prompts_file'])}**" if comparison.get("prompts_file") else ""
    lines = [(f"**A** is the served model ({a}), **B** the second model ({b}); both routed the same "
              f"**{comparison['paired']} prompts**{source} ({how}).")]
    for level, s in comparison["levels"].items():
        changed = f"The routed axis changed on **{s['routed_changed']} of {s['paired']}** prompts."
        if not s["labelled"]:
            lines.append(f"**{_level_name(level)}**: no prompt has an axis label, so there is no accuracy. {changed}")
            continue
        m, ece = s["mcnemar"], s["ece_difference"]
        what = plain(s["what"].removeprefix(f"{level} level").strip())
        lines.append(f"**{_level_name(level)}** {what}, on {s['labelled']} labelled prompts: "
                     f"**accuracy {s['a']['accuracy']:.2f} (A) vs {s['b']['accuracy']:.2f} (B)**, McNemar p = "
                     f"{m['p_value']:.3g} — {m['c']} became correct and {m['b']} became wrong; {_chance(m['p_value'], m['discordant'])}. "
                     f"**ECE {s['a']['ece']:.3f} (A) vs {s['b']['ece']:.3f} (B)**, B − A {_difference(ece, 'paired bootstrap, 95 %')}. "
                     f"{changed}")
    if not comparison["levels"]:
        lines.append("No prompt was analysed by both models, so there is nothing to compare.")
    for notice in comparison.get("notices") or []:
        lines.append(f"⚠ {plain(notice)}")
    if comparison["levels"]:
        lines.append("The table below lists the prompts whose routed axis or correctness changed (prompt level); the "
                     "tests and intervals are under Details.")
    return "\n\n".join(lines)


def comparison_details_markdown(comparison: dict[str, Any] | None) -> str:
    """For the Details fold: per level McNemar's counts and exact p, the accuracy, ECE and debiased ECE differences
    with their paired 95 % intervals, the mean confidence change and the routed-axis transitions; the definitions."""
    if not comparison or not comparison["levels"]:
        return ""
    rows = [("| level | labelled | became correct (c) | became wrong (b) | McNemar exact p | accuracy B − A [95 %] | "
             "ECE B − A [95 %] | debiased ECE B − A [95 %] | mean confidence change |"), "|---|---|---|---|---|---|---|---|---|"]
    moves = []
    for level, s in comparison["levels"].items():
        m = s["mcnemar"]
        p = f"{m['p_value']:.4g}" if s["labelled"] else "n/a"
        mean = "n/a" if s["mean_confidence_change"] is None else f"{s['mean_confidence_change']:+.3f}"
        rows.append(f"| {level} | {s['labelled']} | {m['c']} | {m['b']} | {p} | {_difference(s['accuracy_difference'])} | "
                    f"{_difference(s['ece_difference'])} | {_difference(s['ece_debiased_difference'])} | {mean} |")
        if s["transitions"]:
            moves.append(f"{_level_name(level)}, routed axis A → B: " + ", ".join(
                f"{' → '.join(AXIS_LABELS.get(x, plain(x)) for x in k.split(' → '))} {n}" for k, n in s["transitions"].items()) + ".")
    definitions = comparison.get("definitions") or {}
    notes = [f"**{name.replace('_', ' ')}**: {plain(definitions[name])}." for name in
             ("pairing", "mcnemar", "accuracy_difference", "ece_difference") if name in definitions]
    command = ("The command line does the same without this server's limits: `python -m alignx_demo analyze --model A "
               "--against B --prompts FILE --out FILE.json --csv FILE.csv`.")
    return "\n\n".join(["\n".join(rows), *moves, *notes, command])


def _correct(a: bool | None, b: bool | None) -> str:
    if a is None or b is None:
        return "—"
    word = {True: "right", False: "wrong"}
    return word[a] if a == b else f"{word[a]} → {word[b]}"


def change_rows(comparison: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The paired prompts whose prompt-level routed axis or correctness changed: became wrong first, then became
    correct, then routed elsewhere, each by the size of its confidence change (all of them are in the CSV)."""
    if not comparison or not comparison["levels"]:
        return []
    level = "prompt" if "prompt" in comparison["levels"] else next(iter(comparison["levels"]))
    changed = [r for r in comparison["rows"] if level in r["levels"] and (
        r["levels"][level]["routed_changed"] or r["levels"][level]["change"] in CHANGE_ORDER)]
    return sorted(changed, key=lambda r: (CHANGE_ORDER.get(r["levels"][level]["change"], 2),
                                          -abs(r["levels"][level]["confidence_change"]), r["row"]))


def change_table(rows: list[dict[str, Any]], level: str = "prompt") -> dict[str, Any]:
    """The changes table's value: row, true axis, routed A → B, confidence A → B, correct A → B, prompt."""
    data = []
    for r in rows[:SHOWN_ROWS]:
        c = r["levels"].get(level) or next(iter(r["levels"].values()))
        routed = (AXIS_LABELS[c["routed_a"]] if not c["routed_changed"] else
                  f"{AXIS_LABELS[c['routed_a']]} → {AXIS_LABELS[c['routed_b']]}")
        data.append([r["row"], AXIS_LABELS[r["axis"]] if r["axis"] else "—", routed,
                     f"{c['confidence_a']:.2f} → {c['confidence_b']:.2f}", _correct(c["correct_a"], c["correct_b"]), r["prompt"]])
    return {"headers": CHANGE_HEADERS, "data": data}


def comparison_downloads(comparison: dict[str, Any]) -> tuple[str, str]:
    """The CSV (one row per paired prompt, both levels: `comparison_csv`) and JSON (everything) of a comparison."""
    return write_downloads("alignx-comparison", comparison_csv(comparison), comparison)


def render_comparison(comparison: dict[str, Any] | None) -> tuple[Any, ...]:
    """(changes table, details markdown, CSV download, JSON download) of a comparison; downloads hidden without one."""
    if not comparison:
        hidden = gr.File(value=None, visible=False)
        return change_table([]), "", hidden, hidden
    csv_path, json_path = comparison_downloads(comparison)
    return (change_table(change_rows(comparison)), comparison_details_markdown(comparison),
            gr.File(value=csv_path, visible=True), gr.File(value=json_path, visible=True))


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
    level: gr.Radio
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


def _inputs(slices: dict[str, dict[str, Any]], notice: str | None) -> _Inputs:
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
                gr.HTML(notice_html(notice or f"No shipped slices in the routing analysis file; rebuild it with `{HOW_TO_BUILD}`."))
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
            level = gr.Radio(LEVEL_CHOICES, value="prompt", label="Routing level of the matrix and the tables",
                             elem_id="analysis-level")
            confusion = gr.Plot(initial[0], show_label=False, elem_id="analysis-confusion", elem_classes=["ax-plot", "ax-cells"])
            gr.Markdown("Rows: the axis each prompt was labelled with; columns: the expert the router weighs most over "
                        "the prompt (prompt level) or over the answer it generates (generation level). The diagonal is "
                        "right; colour is the share of the row.", elem_classes=["ax-caption"])
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
    return _Views(summary, level, confusion, slices_md, settle_md, table, csv_file, json_file, result, gr.State(initial[4]))


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


@dataclass
class _Against:
    """The comparison with the operator's second model: its button, summary, changes table, details, downloads and
    JSON (None of them where no second model is configured)."""

    run_btn: gr.Button
    summary: gr.Markdown
    table: gr.Dataframe
    details: gr.Markdown
    csv_file: gr.File
    json_file: gr.File
    result: gr.JSON

    def drawn(self) -> list[Any]:
        """The outputs of `render_comparison`, in its order."""
        return [self.table, self.details, self.csv_file, self.json_file]


def _against(against: ModelContext | None, axes: tuple[str, ...] | None) -> _Against | None:
    """The comparison section: one sentence when it cannot run here, else the Compare button and where its result shows."""
    gr.Markdown("#### Compare with a second model", elem_id="analysis-against-heading")
    notice = second_model_notice(against, axes)
    if against is None:
        gr.HTML(notice_html(notice), elem_id="analysis-against-notice")
        return None
    gr.Markdown(f"**A** is the served model, **B** the second model the operator serves beside it "
                f"({plain(against.name)}). Compare routes the uploaded file (with the calibration chosen above) — or, "
                "without one, the shipped slice chosen — with both, and pairs the prompts: how accuracy and calibration "
                "moved, and which prompts changed.", elem_classes=["ax-caption"])
    if notice:
        gr.HTML(notice_html(notice), elem_id="analysis-against-notice")
    run_btn = gr.Button("Compare A with B", variant="secondary", interactive=not notice, elem_id="analysis-against-run")
    summary = gr.Markdown("", label="Comparison summary", elem_id="analysis-against-summary")
    table = gr.Dataframe(change_table([]), headers=CHANGE_HEADERS, datatype=["number", "str", "str", "str", "str", "str"],
                         interactive=False, wrap=True, max_height=420,
                         column_widths=["8%", "12%", "18%", "14%", "14%", "34%"], elem_id="analysis-against-changes")
    with gr.Row():
        csv_file = gr.File(None, label="Download comparison (CSV)", interactive=False, visible=False, min_width=260,
                           elem_id="analysis-against-csv", elem_classes=["ax-download"])
        json_file = gr.File(None, label="Download comparison (JSON)", interactive=False, visible=False, min_width=260,
                            elem_id="analysis-against-json", elem_classes=["ax-download"])
    with gr.Accordion("Details: McNemar's test, paired intervals and routed-axis changes", open=False,
                      elem_id="analysis-against-details"):
        scroll_hint()
        details = gr.Markdown("", elem_classes=["ax-table"], elem_id="analysis-against-stats")
    with gr.Accordion("Comparison (JSON, as returned by the API)", open=False):
        result = gr.JSON(None, label="Comparison")
    return _Against(run_btn, summary, table, details, csv_file, json_file, result)


def build_analysis_tab(key: int, artefacts: Artefacts, tabs: gr.Tabs, live: Any, against: ModelContext | None = None) -> None:
    """The tab's components and events; `live` is the live tab's handles (`live.LiveTab`), `tabs` the page's tabs,
    `against` the second model the operator serves for comparison (None: the section says how to add one)."""
    hhh = not model_ready(key) or is_hhh(served_axes(key))  # without a model the page shows the bundle's artefacts
    slices = shipped(artefacts) if hhh else {}  # the shipped slices are the HHH bundle's prompts and routing
    notice = (artefacts.notice("analysis") if hhh else
              "the shipped slices are the HHH bundle's: upload a file labelled with this model's axes")
    gr.Markdown(intro_markdown(slices, notice), elem_id="analysis-intro")
    inputs = _inputs(slices, notice)
    shown = _views(next(iter(slices.values()))["result"] if slices else None, _provenance(key, artefacts, slices))
    _wire(key, slices, inputs, shown, tabs, live)
    section = _against(against, served_axes(key) if model_ready(key) else None)
    if section is not None:
        _wire_against(key, serve(against), slices, inputs, section)


def _wire_against(key: int, against_key: int, slices: dict[str, dict[str, Any]], inputs: _Inputs, section: _Against) -> None:
    """Compare (the named endpoint `analyze_against`, only where a second model is configured) and drawing its result."""
    def run_comparison(prompts_file: Any, calibrated: bool, shipped_slice: str | None,
                       progress: gr.Progress = gr.Progress()) -> tuple[str, dict[str, Any]]:
        if shipped_slice not in (None, "") and shipped_slice not in slices:
            raise GenerationError(f"shipped_slice must be one of {', '.join(map(repr, slices)) or 'none (there are none)'}, "
                                  f"got {str(shipped_slice)[:40]!r}")
        chosen = slices.get(shipped_slice) if shipped_slice else None
        return compare_against(key, against_key, prompts_file, calibrated, chosen,
                               lambda side, done, total: progress((done, total), desc=f"routing prompts with {side}",
                                                                  unit="prompts"))

    section.run_btn.click(visitor_errors(run_comparison), inputs=[inputs.prompts_file, inputs.calibrated, inputs.pick],
                          outputs=[section.summary, section.result], api_name="analyze_against",
                          api_description="The served model (A) against the operator's second model (B) on one prompt "
                                          "file (or, without one, a shipped slice): (summary markdown, comparison JSON with "
                                          "per-prompt changes, McNemar's test, paired accuracy and ECE intervals).",
                          **MODEL_EVENT)
    section.result.change(visitor_errors(render_comparison), inputs=section.result, outputs=section.drawn(),
                          api_visibility="private", show_progress="hidden")


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
        if (result or {}).get("prompts_redacted"):
            raise GenerationError(f"{rows[index]['prompt']} is a data id, not the prompt's text (the benchmark text is not "
                                  "shipped), so it cannot run in Live routing")
        calibrated_run = bool((result or {}).get("routing", {}).get("calibrated", True))
        return rows[index]["prompt"], calibrated_run, gr.Tabs(selected="live")

    inputs.run_btn.click(visitor_errors(run_analysis), inputs=[inputs.prompts_file, inputs.calibrated],
                         outputs=[shown.summary, shown.result], api_name="analyze",
                         api_description="Route every prompt of a CSV/JSONL file (optional axis label per row): (summary "
                                         "markdown, analysis JSON with the confusion matrix, accuracy and ECE per slice, "
                                         "misrouted rows, settle points).", **MODEL_EVENT)
    inputs.pick.change(visitor_errors(open_slice), inputs=inputs.pick, outputs=[shown.summary, shown.result],
                       api_visibility="private", queue=False)
    shown.result.change(visitor_errors(render), inputs=[shown.result, shown.level], outputs=shown.drawn(),
                        api_visibility="private", show_progress="hidden")
    shown.level.change(visitor_errors(views), inputs=[shown.result, shown.level], outputs=shown.drawn()[:5],
                       api_visibility="private", show_progress="hidden", queue=False)
    opened = shown.table.select(visitor_errors(open_row), inputs=[shown.rows, shown.result],
                                outputs=[live.prompt, live.calibrated, tabs], api_visibility="private", queue=False)
    live.run_after(opened)
