"""Readers for the offline data in the data directory (default `../shared/data`).

Every source is one row of the table in `sources.py` (file, format, field mapping, axis, role);
this module turns rows into `AxisExample`s with the few parsers the table names (`PARSERS`): a
generic one for mapped fields and small ones for the formats that need more (LIMA's history,
Self-Instruct's instances, HH transcripts, TruthfulQA and its judge file, XSTest labels, AlpacaEval
references). A malformed row is skipped with a warning naming the file and the 1-based row number;
a missing data directory or file raises `DataError` naming the path. Nothing is cached or copied:
files are read from the data directory each time.

Axis roles (DESIGN.md section 4):

- helpful (training): LIMA (first turn only), Dolly 5k shard, Alpaca-GPT4 demo, AlpacaDataCleaned
  1000, Self-Instruct seed tasks, GPTeacher roleplay, GPTeacher codegen (first 1500 rows: it is
  code-heavy), AlpacaEval (GPT-4-1106 reference outputs; split by question). The rows listed in
  `EXCLUDE_alpacaeval_overlap.json` are dropped.
- harmless (training): safety-tuned-llamas safety-only instructions (harmful request -> safe
  answer), HH-RLHF harmless-base test (first Human turn -> first Assistant turn of `chosen`).
- honest (training): TruthfulQA v1 (question -> best answer, plus each other correct answer as an
  extra response) and the "yes" rows of `finetune_truth.jsonl` parsed into (question, answer).
  All split by question.

Out-of-distribution sets (`data.ood`): MT-Bench first turns (`sources.OOD_SOURCES`, parser
"mt_bench"), whole harmful sources (BeaverTails, AdvBench), TruthfulQA questions of the held-out
categories (`sources.TRUTHFULQA_HELDOUT_CATEGORIES`; dropped from every split only with
`load_axis_data(exclude_heldout_categories=True)`) and XSTest.

Evaluation-only prompt sets (`load_eval_sets`): XSTest prompts, BeaverTails-Evaluation, AdvBench
harmful behaviours, the safety-tuned-llamas evaluation sets, TruthfulQA v1 MC1/MC2, AlpacaEval
with all three reference outputs, and XSTest's human-labelled model completions. Their rows carry
a split too (same hash rule), so a calibrator can be fitted on the calibration part of a shifted set
and reported on the rest; none of them is ever used for training.

XSTest labels: the 200 unsafe prompts get axis "harmless"; the 250 safe prompts (benign requests
that merely look unsafe, e.g. "How can I kill a Python process?") get axis "" (unlabelled) with
`meta["label"] == "safe"`, because no single HHH axis is their "right" expert — they are the
shifted set on which over-refusal ("too harmless") and routing calibration are measured. The
safety-tuned-llamas benign controls (I-Alpaca, I-PhysicalSafetySafe) likewise get axis "" with
`meta["label"] == "safe"`; their harmful sets get axis "harmless" with `meta["label"] == "unsafe"`.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from itertools import islice
from pathlib import Path
from typing import Any

from alignx_demo.config import AXES
from alignx_demo.data.records import SPLITS, AxisExample, normalize_key, split_of, stable_rank
from alignx_demo.data.sources import EVAL_SOURCES, TRAINING_SOURCES, TRUTHFULQA_HELDOUT_CATEGORIES, Source
from alignx_demo.data.sources import SOURCE_FILES as SOURCE_FILES  # re-exported: the evaluation report hashes them

DEFAULT_DATA_DIR = "../shared/data"
"""Default data directory, relative to the working directory (the project checkout)."""

QUICK_PER_AXIS = {"train": 300, "calibration": 50, "eval": 50}
"""Examples per axis and split kept by `load_axis_data(quick=True)`."""

EXCLUDE_FILE = "EXCLUDE_alpacaeval_overlap.json"


class DataError(RuntimeError):
    """The data directory or one of its files is missing or unreadable."""


@dataclass
class LoadResult:
    """What `load_axis_data` returns.

    Attributes:
        examples: training-role examples of all three axes and all splits.
        warnings: one line per skipped row or other problem ("file: row N: reason").
        dropped: counts of rows removed on purpose, by reason (overlap exclusions, dedup,
            decontamination against evaluation-only prompt sets, caps).
    """

    examples: list[AxisExample]
    warnings: list[str] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# file access


def resolve_data_dir(data_dir: str | Path) -> Path:
    """The data directory as a Path, or a DataError saying which path is missing."""
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise DataError(
            f"data directory not found: {path.resolve()} "
            f"(set it with --data-dir; the default is {DEFAULT_DATA_DIR}, beside the project checkout)"
        )
    return path


def _file(data_dir: Path, name: str) -> Path:
    path = data_dir / name
    if not path.is_file():
        raise DataError(f"data file missing: {name} (expected in {data_dir.resolve()})")
    return path


def _read_text(path: Path) -> str:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rt", encoding="utf-8") as fh:
                return fh.read()
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise DataError(f"cannot read data file {path.name}: {exc}") from exc


def _read_json(path: Path) -> Any:
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise DataError(f"data file {path.name} is not valid JSON: {exc}") from exc


def _read_json_list(path: Path) -> list[Any]:
    data = _read_json(path)
    if not isinstance(data, list):
        raise DataError(f"data file {path.name}: expected a JSON list, got {type(data).__name__}")
    return data


def _iter_jsonl(path: Path, warnings: list[str]) -> Iterator[tuple[int, Any]]:
    """(1-based line number, parsed object) for each non-empty line; bad lines are warned."""
    for lineno, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as exc:
            warnings.append(f"{path.name}: row {lineno}: invalid JSON ({exc.msg}); skipped")


def _iter_csv(path: Path, required: Iterable[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """(1-based data row number, row dict) of a CSV file whose header has every required column."""
    reader = csv.DictReader(io.StringIO(_read_text(path), newline=""))
    missing = [c for c in required if c not in (reader.fieldnames or [])]
    if missing:
        raise DataError(f"data file {path.name}: missing columns {missing} (has {reader.fieldnames})")
    yield from enumerate(reader, start=1)


def _iter_columns(path: Path, key: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """Rows of a JSON object of parallel lists: row i holds item i of every list long enough."""
    data = _read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise DataError(f"data file {path.name}: expected an object with an {key!r} list")
    lists = {k: v for k, v in data.items() if isinstance(v, list)}
    for i in range(len(data[key])):
        yield i + 1, {k: v[i] for k, v in lists.items() if i < len(v)}


def load_exclusions(data_dir: str | Path) -> dict[str, set[int]]:
    """File name -> 0-based row indices to drop (AlpacaEval overlaps). Empty if the file is absent."""
    path = resolve_data_dir(data_dir) / EXCLUDE_FILE
    if not path.is_file():
        return {}
    out: dict[str, set[int]] = {}
    for item in _read_json_list(path):
        try:
            out.setdefault(str(item["file"]), set()).add(int(item["row_index_0based"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{EXCLUDE_FILE}: malformed entry {item!r}: {exc}") from exc
    return out


@dataclass
class _Reader:
    """What a parser reads through: the data directory, the warnings list, rows to drop by file."""

    root: Path
    warnings: list[str]
    exclude: Mapping[str, Collection[int]]

    def warn(self, file: str, rowno: int, reason: str) -> None:
        self.warnings.append(f"{file}: row {rowno}: {reason}; skipped")

    def rows(self, unit: Source, file: str | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
        """(1-based row number, row object) of the unit's file (or `file`), lazily so a capped
        source stops reading; excluded rows are dropped, rows that are not objects are warned."""
        name = file or unit.file
        path = _file(self.root, name)
        rows: Iterable[tuple[int, Any]]
        if unit.format == "csv":
            rows = _iter_csv(path, unit.columns())
        elif unit.format == "jsonl":
            rows = _iter_jsonl(path, self.warnings)
        elif unit.format == "columns":
            rows = _iter_columns(path, unit.prompt)
        else:
            rows = enumerate(_read_json_list(path), start=1)
        skip = self.exclude.get(name, ())
        for rowno, row in rows:
            if rowno - 1 in skip:
                continue
            if isinstance(row, dict):
                yield rowno, row
            else:
                self.warn(name, rowno, "not an object")


# --------------------------------------------------------------------------------------------
# row -> example helpers


def _text(value: Any) -> str | None:
    """A stripped string, or None when the value is missing or not a string."""
    if not isinstance(value, str):
        return None
    return value.strip()


def _prompt(unit: Source, row: Mapping[str, Any]) -> str | None:
    """The row's prompt field, plus its input field after a blank line; None if either is not text."""
    instruction = _text(row.get(unit.prompt))
    extra = row.get(unit.input) if unit.input else None
    extra = "" if extra is None else _text(extra)
    if not instruction or extra is None:
        return None
    return f"{instruction}\n\n{extra}" if extra else instruction


def _meta(unit: Source, row: Mapping[str, Any]) -> dict[str, Any]:
    """The unit's mapped meta fields the row has, then its fixed meta."""
    return {key: row[col] for key, col in unit.meta if col in row} | dict(unit.fixed_meta)


def _axis(unit: Source, label: str) -> str:
    """Harmful ("unsafe") prompts get the unit's axis; benign look-alikes are unlabelled."""
    return unit.axis if label == "unsafe" else ""


def _quoted(*names: str | None) -> str:
    return "/".join(f"'{n}'" for n in names if n)


def _example(
    source: str, row: int | str, axis: str, prompt: str, response: str, *, suffix: str = "",
    meta: dict[str, Any] | None = None,
) -> AxisExample:
    """An example split by its normalised prompt (for question sets the prompt is the question)."""
    return AxisExample(
        id=f"{source}:{row}{suffix}",
        axis=axis,
        prompt=prompt,
        response=response,
        source=source,
        split=split_of(normalize_key(prompt)),
        meta=dict(meta or {}),
    )


# --------------------------------------------------------------------------------------------
# parsers (named by `Source.parser`)


def _parse_fields(unit: Source, data: _Reader) -> Iterator[AxisExample]:
    """Generic: prompt (+ input) -> response (or no response), as the unit maps them."""
    for rowno, row in data.rows(unit):
        prompt = _prompt(unit, row)
        response = _text(row.get(unit.response)) if unit.response else ""
        if not prompt or not (response or unit.response is None):
            data.warn(unit.file, rowno, f"missing or non-text {_quoted(unit.prompt, unit.response)}")
            continue
        yield _example(unit.name, rowno - 1, unit.axis, prompt, response, meta=_meta(unit, row))


def _parse_lima(unit: Source, data: _Reader) -> Iterator[AxisExample]:
    """LIMA, first turn only: `history[0]` of a multi-turn row, else instruction (+ input) -> output."""
    for rowno, row in data.rows(unit):
        history = row.get("history") or []
        try:
            if history:
                prompt, response = _text(history[0][0]), _text(history[0][1])
            else:
                prompt, response = _prompt(unit, row), _text(row.get(unit.response))
        except (KeyError, IndexError, TypeError):
            prompt = response = None
        if not prompt or not response:
            data.warn(unit.file, rowno, "malformed LIMA row")
            continue
        yield _example(unit.name, rowno - 1, unit.axis, prompt, response, meta={"turns": 1 + len(history)})


def _parse_self_instruct(unit: Source, data: _Reader) -> Iterator[AxisExample]:
    """Self-Instruct seed tasks: instruction + each instance's input -> that instance's output."""
    for rowno, row in data.rows(unit):
        instances = row.get("instances")
        if not _text(row.get(unit.prompt)) or not isinstance(instances, list) or not instances:
            data.warn(unit.file, rowno, f"missing '{unit.prompt}' or 'instances'")
            continue
        meta = _meta(unit, row) | {"is_classification": bool(row.get("is_classification"))}
        for k, inst in enumerate(instances):
            ok = isinstance(inst, dict)
            prompt = _prompt(unit, {**inst, unit.prompt: row[unit.prompt]}) if ok else None
            response = _text(inst.get(unit.response)) if ok else None
            if not prompt or not response:
                data.warn(unit.file, rowno, f"instance {k} malformed")
                continue
            suffix = f".{k}" if len(instances) > 1 else ""
            yield _example(unit.name, rowno - 1, unit.axis, prompt, response, suffix=suffix, meta=meta)


_HH_TURN = re.compile(r"\n\n(Human|Assistant):")


def parse_hh_transcript(text: str) -> list[tuple[str, str]]:
    """'\\n\\nHuman: ..\\n\\nAssistant: ..' -> [(role, text), ...] with roles 'Human'/'Assistant'."""
    parts = _HH_TURN.split(text)
    # parts = [prefix, role1, text1, role2, text2, ...]
    return [(parts[i], parts[i + 1].strip()) for i in range(1, len(parts) - 1, 2)]


def _parse_hh(unit: Source, data: _Reader) -> Iterator[AxisExample]:
    """HH-RLHF: first Human turn -> first Assistant turn of the transcript in the prompt field."""
    for rowno, row in data.rows(unit):
        text = row.get(unit.prompt)
        turns = parse_hh_transcript(text) if isinstance(text, str) else []
        if len(turns) < 2 or (turns[0][0], turns[1][0]) != ("Human", "Assistant") or not turns[0][1] or not turns[1][1]:
            data.warn(unit.file, rowno, f"no Human/Assistant first exchange in '{unit.prompt}'")
            continue
        yield _example(unit.name, rowno - 1, unit.axis, turns[0][1], turns[1][1], meta={"turns": len(turns)})


def _split_answers(text: str | None) -> list[str]:
    return [a.strip() for a in (text or "").split(";") if a.strip()]


def _parse_truthfulqa(unit: Source, data: _Reader) -> Iterator[AxisExample]:
    """TruthfulQA: question -> best answer, plus one example per other correct answer ("<row>.c<k>")."""
    for rowno, row in data.rows(unit):
        question, best = _text(row.get(unit.prompt)), _text(row.get(unit.response))
        if not question or not best:
            data.warn(unit.file, rowno, f"empty '{unit.prompt}' or '{unit.response}'")
            continue
        meta = _meta(unit, row)
        meta |= {key: _split_answers(meta.get(key)) for key in ("correct_answers", "incorrect_answers")}
        yield _example(unit.name, rowno - 1, unit.axis, question, best, meta=meta)
        seen = {normalize_key(best)}
        for k, answer in enumerate(meta["correct_answers"]):
            if normalize_key(answer) not in seen:
                seen.add(normalize_key(answer))
                extra = {"category": meta["category"], "variant": "correct_answer"}
                yield _example(unit.name, rowno - 1, unit.axis, question, answer, suffix=f".c{k}", meta=extra)


_QA = re.compile(r"^Q:\s*(?P<q>.*?)\nA:\s*(?P<a>.*?)\n(?:True|Helpful):\s*$", re.S)


def _parse_truthfulqa_judge(unit: Source, data: _Reader) -> Iterator[AxisExample]:
    """Judge rows whose completion is "yes" -> the (question, answer) of their 'Q: ..\\nA: ..' prompt.

    Rows judged "no" are skipped silently (untrue answers, not malformed rows); repeated
    (question, answer) pairs are kept once.
    """
    seen: set[tuple[str, str]] = set()
    for rowno, row in data.rows(unit):
        text, verdict = row.get(unit.prompt), row.get(unit.response)
        m = _QA.match(text) if isinstance(text, str) else None
        if not m or not isinstance(verdict, str):
            data.warn(unit.file, rowno, "not a 'Q: ..\\nA: ..\\nTrue:' prompt with a completion")
            continue
        question, answer = m["q"].strip(), m["a"].strip()
        pair = (normalize_key(question), normalize_key(answer))
        if verdict.strip().lower() != "yes" or not question or not answer or pair in seen:
            continue
        seen.add(pair)
        yield _example(unit.name, rowno - 1, unit.axis, question, answer, meta=_meta(unit, row))


def _parse_truthfulqa_mc(unit: Source, data: _Reader) -> Iterator[AxisExample]:
    """TruthfulQA MC1/MC2: question -> no response; every mapped target field is an answer -> 0/1 dict."""
    for rowno, row in data.rows(unit):
        question = _text(row.get(unit.prompt))
        targets = {key: row.get(col) for key, col in unit.meta}
        if not question or not all(isinstance(t, dict) and t for t in targets.values()):
            data.warn(unit.file, rowno, f"missing {_quoted(unit.prompt, *(col for _, col in unit.meta))}")
            continue
        meta = {key: dict(t) for key, t in targets.items()}
        yield _example(unit.name, rowno - 1, unit.axis, question, "", meta=meta)


def _parse_xstest(unit: Source, data: _Reader) -> Iterator[AxisExample]:
    """XSTest prompts, labelled per row: "unsafe" -> the unit's axis, "safe" -> unlabelled."""
    label_column = dict(unit.meta)["label"]
    for rowno, row in data.rows(unit):
        prompt, label = _text(row.get(unit.prompt)), _text(row.get(label_column))
        if not prompt or label not in ("safe", "unsafe"):
            data.warn(unit.file, rowno, "empty prompt or label not safe/unsafe")
            continue
        meta = _meta(unit, row) | {"label": label}
        yield _example(unit.name, row.get("id") or rowno - 1, _axis(unit, label), prompt, "", meta=meta)


def _parse_xstest_completions(unit: Source, data: _Reader) -> Iterator[AxisExample]:
    """XSTest's human-labelled completions, one file per model (for validating a refusal detector).

    `response` is the model's completion; meta: model, type, label ("unsafe" for XSTest's
    "contrast_*" types, else "safe"), final_label ("1_full_compliance" / "2_full_refusal" /
    "3_partial_refusal").
    """
    columns = dict(unit.meta)
    for model in unit.variants:
        file = unit.file.format(variant=model)
        for rowno, row in data.rows(unit, file):
            prompt, completion = _text(row.get(unit.prompt)), row.get(unit.response)
            final = _text(row.get(columns["final_label"]))
            if not prompt or completion is None or not final:
                data.warn(file, rowno, "empty prompt/completion/final_label")
                continue
            kind = row.get(columns["type"]) or ""
            label = "unsafe" if kind.startswith("contrast") else "safe"
            meta = {"model": model, "type": kind, "label": label, "final_label": final}
            row_id = row.get("id") or rowno - 1
            yield _example(f"{unit.name}_{model}", row_id, _axis(unit, label), prompt, completion.strip(), meta=meta)


def _parse_alpacaeval(unit: Source, data: _Reader) -> Iterator[AxisExample]:
    """AlpacaEval with `meta["references"]`: generator -> output, for each reference file present."""
    own = next(gen for gen, _, file in unit.references if file == unit.file)
    refs: dict[str, dict[str, str]] = {}
    for gen, _, file in unit.references:
        if file == unit.file:
            continue
        if not (data.root / file).is_file():
            data.warnings.append(f"{file}: missing; AlpacaEval references from {gen} left out")
            continue
        for _, row in data.rows(unit, file):
            if isinstance(row.get(unit.prompt), str):
                refs.setdefault(normalize_key(row[unit.prompt]), {})[gen] = str(row.get(unit.response, ""))
    for e in _parse_fields(unit, data):
        references = {own: e.response, **refs.get(normalize_key(e.prompt), {})}
        yield replace(e, meta=e.meta | {"references": references})


def _parse_mt_bench(unit: Source, data: _Reader) -> Iterator[AxisExample]:
    """MT-Bench questions: the first of the `turns` list -> no response (later turns build on the answer)."""
    for rowno, row in data.rows(unit):
        turns = row.get(unit.prompt)
        prompt = _text(turns[0]) if isinstance(turns, list) and turns else None
        if not prompt:
            data.warn(unit.file, rowno, f"no first turn in '{unit.prompt}'")
            continue
        yield _example(unit.name, row.get("question_id", rowno - 1), unit.axis, prompt, "", meta=_meta(unit, row))


PARSERS: dict[str, Callable[[Source, _Reader], Iterator[AxisExample]]] = {
    "fields": _parse_fields,
    "lima": _parse_lima,
    "self_instruct": _parse_self_instruct,
    "hh": _parse_hh,
    "truthfulqa": _parse_truthfulqa,
    "truthfulqa_judge": _parse_truthfulqa_judge,
    "truthfulqa_mc": _parse_truthfulqa_mc,
    "xstest": _parse_xstest,
    "xstest_completions": _parse_xstest_completions,
    "alpacaeval": _parse_alpacaeval,
    "mt_bench": _parse_mt_bench,
}


def read_source(
    data_dir: str | Path, unit: Source, warnings: list[str], exclude: Mapping[str, Collection[int]] | None = None
) -> list[AxisExample]:
    """The examples of one source (at most `unit.cap`), minus the `exclude` rows (file -> 0-based rows)."""
    data = _Reader(resolve_data_dir(data_dir), warnings, exclude or {})
    return list(islice(PARSERS[unit.parser](unit, data), unit.cap))


def read_xstest(data_dir: str | Path, warnings: list[str]) -> list[AxisExample]:
    """XSTest's prompts alone (`load_eval_sets(...)["xstest"]` without reading every other set)."""
    return read_source(data_dir, next(u for u in EVAL_SOURCES if u.name == "xstest"), warnings)


# --------------------------------------------------------------------------------------------
# top level


def _cap(examples: list[AxisExample], n: int) -> list[AxisExample]:
    """A deterministic sample of n examples (by stable hash of the id), in original order."""
    if len(examples) <= n:
        return examples
    keep = {e.id for e in sorted(examples, key=lambda e: stable_rank(e.id))[:n]}
    return [e for e in examples if e.id in keep]


def load_eval_sets(data_dir: str | Path, warnings: list[str] | None = None) -> dict[str, list[AxisExample]]:
    """Evaluation-only sets by name (the eval-role sources of `sources.SOURCES`).

    Names: alpacaeval (with `meta["references"]` of all three reference generators),
    truthfulqa_mc, xstest, xstest_completions, beavertails, advbench, stl_malicious, stl_qharm,
    stl_cona, stl_controversial, stl_physical_unsafe, stl_alpaca, stl_physical_safe. Pass a list as
    `warnings` to collect skipped-row warnings.
    """
    root = resolve_data_dir(data_dir)
    warns = warnings if warnings is not None else []
    return {unit.name: read_source(root, unit, warns) for unit in EVAL_SOURCES}


def _eval_only_prompt_keys(root: Path, warnings: list[str]) -> set[str]:
    """Normalised prompts of the evaluation sets marked `decontaminate` (harmful and benign prompts)."""
    keys: set[str] = set()
    for unit in EVAL_SOURCES:
        if unit.decontaminate:
            try:
                keys.update(normalize_key(e.prompt) for e in read_source(root, unit, warnings))
            except DataError as exc:
                warnings.append(f"decontamination: {exc}")
    return keys


def heldout_question_keys(examples: Iterable[AxisExample], categories: Collection[str] = TRUTHFULQA_HELDOUT_CATEGORIES) -> set[str]:
    """Normalised questions of the TruthfulQA examples (source "truthfulqa", which carry
    `meta["category"]`) whose category is one of `categories`."""
    return {normalize_key(e.prompt) for e in examples if e.source == "truthfulqa" and e.meta.get("category") in categories}


def load_axis_data(
    data_dir: str | Path = DEFAULT_DATA_DIR, *, quick: bool = False, max_per_source: int | None = None,
    exclude_heldout_categories: bool = False,
) -> LoadResult:
    """All training-role examples (three axes, all splits) from the data directory.

    - The rows of `EXCLUDE_alpacaeval_overlap.json` (AlpacaEval overlaps) are dropped.
    - Exact duplicates (same axis, prompt and response) are kept once.
    - Training examples whose prompt equals (normalised) a prompt of an evaluation-only set
      (XSTest, BeaverTails, AdvBench, safety-tuned-llamas evaluation) are dropped (Q-Harm, for
      one, is drawn from HH-RLHF harmless).
    - `max_per_source` keeps a deterministic sample of at most that many examples per source.
    - `quick` keeps a deterministic sample of `QUICK_PER_AXIS` examples per axis and split.
    - `exclude_heldout_categories` (off by default; for router training and calibration that must
      leave the out-of-distribution slice unseen): every example, of any split and source, whose
      prompt is a TruthfulQA question of `sources.TRUTHFULQA_HELDOUT_CATEGORIES` is dropped (the
      question file's answers and the judge file's rows alike), counted as
      "heldout_truthfulqa_category". Off, nothing changes: splits and examples are those of every
      earlier release.

    Raises DataError for a missing directory or file; malformed rows become warnings.
    """
    root = resolve_data_dir(data_dir)
    warnings: list[str] = []
    dropped: dict[str, int] = {}
    exclusions = load_exclusions(root)
    if exclusions:
        dropped["alpacaeval_overlap_excluded"] = sum(len(rows) for rows in exclusions.values())
    else:
        warnings.append(f"{EXCLUDE_FILE} not found: AlpacaEval-overlap rows were NOT dropped")

    per_source = [read_source(root, unit, warnings, exclusions) for unit in TRAINING_SOURCES]
    eval_keys = _eval_only_prompt_keys(root, warnings)
    heldout_keys = heldout_question_keys(e for items in per_source for e in items) if exclude_heldout_categories else set()

    def drop(reason: str, n: int = 1) -> None:
        dropped[reason] = dropped.get(reason, 0) + n

    examples: list[AxisExample] = []
    seen: set[tuple[str, str, str]] = set()
    for items in per_source:
        kept = []
        for e in items:
            sig = (e.axis, normalize_key(e.prompt), normalize_key(e.response))
            if sig in seen:
                drop("duplicate")
            elif sig[1] in eval_keys:
                drop("eval_prompt_overlap")
            elif sig[1] in heldout_keys:
                drop("heldout_truthfulqa_category")
            else:
                seen.add(sig)
                kept.append(e)
        if max_per_source is not None and len(kept) > max_per_source:
            drop("max_per_source", len(kept) - max_per_source)
            kept = _cap(kept, max_per_source)
        examples.extend(kept)

    if quick:
        sampled: list[AxisExample] = []
        for axis in AXES:
            for split in SPLITS:
                group = [e for e in examples if e.axis == axis and e.split == split]
                sampled.extend(_cap(group, QUICK_PER_AXIS[split]))
        dropped["quick_sample"] = len(examples) - len(sampled)
        examples = sampled
    return LoadResult(examples=examples, warnings=warnings, dropped=dropped)


def xstest_routing_set(items: Iterable[AxisExample], splits: tuple[str, ...]) -> list[AxisExample]:
    """XSTest prompts labelled for routing, as a shifted set: safe-but-scary prompts deserve an
    answer (axis "helpful"), unsafe ones a refusal (axis "harmless"). Only the given splits."""
    return [
        AxisExample(e.id, "harmless" if e.meta.get("label") == "unsafe" else "helpful", e.prompt, "", e.source, e.split,
                    e.meta)
        for e in items
        if e.split in splits
    ]
