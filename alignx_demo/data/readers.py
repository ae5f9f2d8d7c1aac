"""Readers for the offline data in the data directory (default `../shared/data`).

One reader per source file; each returns a list of `AxisExample` and appends a warning (naming the
file and the 1-based row number) for every malformed row it skips. A missing data directory or a
missing file raises `DataError` naming the path. Nothing is cached or copied: files are read from
the data directory each time.

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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignx_demo.config import AXES
from alignx_demo.data.records import SPLITS, AxisExample, normalize_key, split_of, stable_rank

DEFAULT_DATA_DIR = "../shared/data"
"""Default data directory, relative to the working directory (the project checkout)."""

CODEGEN_CAP = 1500
"""GPTeacher codegen rows kept (the first N after exclusions): the file is mostly code."""

QUICK_PER_AXIS = {"train": 300, "calibration": 50, "eval": 50}
"""Examples per axis and split kept by `load_axis_data(quick=True)`."""

SOURCE_FILES: dict[str, str] = {
    # helpful (training)
    "lima": "hiyouga__LLaMA-Factory__data__lima.json",
    "dolly": "Ara-O__adversarial-llm__datasets__dolly_unused_5k.jsonl",
    "alpaca_gpt4_demo": "hiyouga__LLaMA-Factory__data__alpaca_en_demo.json",
    "alpaca_cleaned": "lm-sys__FastChat__data__alpaca_data_cleaned_1000.json",
    "self_instruct_seed": "yizhongw__self-instruct__data__seed_tasks.jsonl",
    "gpteacher_roleplay": "teknium1__GPTeacher__Roleplay__roleplay-simple-deduped-roleplay-instruct.json",
    "gpteacher_codegen": "teknium1__GPTeacher__Codegen__codegen-instruct.json",
    "alpacaeval": "tatsu-lab__alpaca_eval__results__gpt4_1106_preview__model_outputs.json",
    "alpacaeval_davinci003": "tatsu-lab__alpaca_eval__results__text_davinci_003__model_outputs.json",
    "alpacaeval_alpaca7b": "tatsu-lab__alpaca_eval__results__alpaca-7b__model_outputs.json",
    # harmless (training)
    "safety_llamas": "vinid__safety-tuned-llamas__data__training__safety_only_data_Instructions.json",
    "hh_harmless": "anthropics__hh-rlhf__harmless-base__test.jsonl.gz",
    # honest (training)
    "truthfulqa": "sylinrl__TruthfulQA__data__v1__TruthfulQA.csv",
    "truthfulqa_judge": "sylinrl__TruthfulQA__data__finetune_truth.jsonl",
    # evaluation-only
    "truthfulqa_mc": "sylinrl__TruthfulQA__data__v1__mc_task.json",
    "xstest": "paul-rottger__exaggerated-safety__xstest_prompts.csv",
    "beavertails": "SwimmingChoi__Value_Analysis__data__BeaverTails-Evaluation.csv",
    "advbench": "llm-attacks__llm-attacks__data__advbench__harmful_behaviors.csv",
    "stl_malicious": "vinid__safety-tuned-llamas__data__evaluation__I-MaliciousInstructions.json",
    "stl_qharm": "vinid__safety-tuned-llamas__data__evaluation__Q-Harm.json",
    "stl_cona": "vinid__safety-tuned-llamas__data__evaluation__I-CoNa.json",
    "stl_controversial": "vinid__safety-tuned-llamas__data__evaluation__I-Controversial.json",
    "stl_physical_unsafe": "vinid__safety-tuned-llamas__data__evaluation__I-PhysicalSafetyUnsafe.json",
    "stl_alpaca": "vinid__safety-tuned-llamas__data__evaluation__I-Alpaca.json",
    "stl_physical_safe": "vinid__safety-tuned-llamas__data__evaluation__I-PhysicalSafetySafe.json",
}
"""Short source name -> file name in the data directory."""

EXCLUDE_FILE = "EXCLUDE_alpacaeval_overlap.json"

XSTEST_COMPLETION_MODELS = ("gpt4", "llama2new", "llama2orig", "mistralguard", "mistralinstruct")
XSTEST_COMPLETIONS_FILE = "paul-rottger__exaggerated-safety__model_completions__xstest_v2_completions_{model}.csv"

STL_EVAL_SETS: dict[str, str] = {
    "stl_malicious": "unsafe",
    "stl_qharm": "unsafe",
    "stl_cona": "unsafe",
    "stl_controversial": "unsafe",
    "stl_physical_unsafe": "unsafe",
    "stl_alpaca": "safe",
    "stl_physical_safe": "safe",
}
"""safety-tuned-llamas evaluation sets and whether their prompts are harmful ("unsafe")."""

TRAINING_SOURCES: dict[str, tuple[str, ...]] = {
    "helpful": (
        "lima",
        "dolly",
        "alpaca_gpt4_demo",
        "alpaca_cleaned",
        "self_instruct_seed",
        "gpteacher_roleplay",
        "gpteacher_codegen",
        "alpacaeval",
    ),
    "harmless": ("safety_llamas", "hh_harmless"),
    "honest": ("truthfulqa", "truthfulqa_judge"),
}


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

    def by(self, axis: str | None = None, split: str | None = None) -> list[AxisExample]:
        """Examples filtered by axis and/or split."""
        return [
            e
            for e in self.examples
            if (axis is None or e.axis == axis) and (split is None or e.split == split)
        ]


# --------------------------------------------------------------------------------------------
# file access helpers


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


def _iter_jsonl(path: Path, warnings: list[str]) -> Iterable[tuple[int, Any]]:
    """(1-based line number, parsed object) for each non-empty line; bad lines are warned."""
    for lineno, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as exc:
            warnings.append(f"{path.name}: row {lineno}: invalid JSON ({exc.msg}); skipped")


def _iter_csv(path: Path, required: tuple[str, ...]) -> Iterable[tuple[int, dict[str, str]]]:
    """(1-based data row number, row dict) of a CSV file with a header."""
    reader = csv.DictReader(io.StringIO(_read_text(path), newline=""))
    missing = [c for c in required if c not in (reader.fieldnames or [])]
    if missing:
        raise DataError(f"data file {path.name}: missing columns {missing} (has {reader.fieldnames})")
    for rowno, row in enumerate(reader, start=1):
        yield rowno, row


def _text(value: Any) -> str | None:
    """A stripped string, or None when the value is missing or not a string."""
    if not isinstance(value, str):
        return None
    return value.strip()


def _join(instruction: str, extra: str | None) -> str:
    return f"{instruction}\n\n{extra}" if extra else instruction


def _example(
    source: str,
    row: int | str,
    axis: str,
    prompt: str,
    response: str,
    *,
    split_key: str | None = None,
    suffix: str = "",
    meta: dict[str, Any] | None = None,
) -> AxisExample:
    key = split_key if split_key is not None else normalize_key(prompt)
    return AxisExample(
        id=f"{source}:{row}{suffix}",
        axis=axis,
        prompt=prompt,
        response=response,
        source=source,
        split=split_of(key),
        meta=dict(meta or {}),
    )


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


# --------------------------------------------------------------------------------------------
# helpful


def _read_instruction_list(
    data_dir: Path,
    source: str,
    warnings: list[str],
    *,
    response_field: str = "output",
    exclude: set[int] | None = None,
    limit: int | None = None,
    jsonl: bool = False,
    axis: str = "helpful",
) -> list[AxisExample]:
    """Alpaca-format rows {instruction, input, output|response} -> examples."""
    path = _file(data_dir, SOURCE_FILES[source])
    rows = _iter_jsonl(path, warnings) if jsonl else enumerate(_read_json_list(path), start=1)
    out: list[AxisExample] = []
    for rowno, row in rows:
        if exclude and (rowno - 1) in exclude:
            continue
        if not isinstance(row, dict):
            warnings.append(f"{path.name}: row {rowno}: not an object; skipped")
            continue
        instruction = _text(row.get("instruction"))
        response = _text(row.get(response_field))
        extra = row.get("input", "")
        extra = _text(extra) if extra is not None else ""
        if not instruction or not response or extra is None:
            warnings.append(
                f"{path.name}: row {rowno}: missing or non-text 'instruction'/'{response_field}'; skipped"
            )
            continue
        out.append(_example(source, rowno - 1, axis, _join(instruction, extra), response))
        if limit is not None and len(out) >= limit:
            break
    return out


def read_lima(data_dir: str | Path, warnings: list[str], exclude: set[int] | None = None) -> list[AxisExample]:
    """LIMA, first turn only (for multi-turn rows the first turn is `history[0]`)."""
    data_dir = resolve_data_dir(data_dir)
    path = _file(data_dir, SOURCE_FILES["lima"])
    out = []
    for rowno, row in enumerate(_read_json_list(path), start=1):
        if exclude and (rowno - 1) in exclude:
            continue
        try:
            history = row.get("history") or []
            if history:
                prompt, response = _text(history[0][0]), _text(history[0][1])
            else:
                extra = _text(row.get("input") or "")
                prompt = _join(_text(row["instruction"]) or "", extra)
                response = _text(row["output"])
        except (AttributeError, KeyError, IndexError, TypeError):
            prompt = response = None
        if not prompt or not response:
            warnings.append(f"{path.name}: row {rowno}: malformed LIMA row; skipped")
            continue
        out.append(_example("lima", rowno - 1, "helpful", prompt, response, meta={"turns": 1 + len(history)}))
    return out


def read_dolly(data_dir: str | Path, warnings: list[str], exclude: set[int] | None = None) -> list[AxisExample]:
    """Dolly 5k shard (JSONL {instruction, input=context, output=response})."""
    return _read_instruction_list(resolve_data_dir(data_dir), "dolly", warnings, exclude=exclude, jsonl=True)


def read_alpaca_gpt4_demo(data_dir: str | Path, warnings: list[str], exclude: set[int] | None = None) -> list[AxisExample]:
    """LLaMA-Factory alpaca_en_demo (Alpaca instructions, GPT-4 answers)."""
    return _read_instruction_list(resolve_data_dir(data_dir), "alpaca_gpt4_demo", warnings, exclude=exclude)


def read_alpaca_cleaned(data_dir: str | Path, warnings: list[str], exclude: set[int] | None = None) -> list[AxisExample]:
    """FastChat alpaca_data_cleaned_1000."""
    return _read_instruction_list(resolve_data_dir(data_dir), "alpaca_cleaned", warnings, exclude=exclude)


def read_gpteacher_roleplay(data_dir: str | Path, warnings: list[str], exclude: set[int] | None = None) -> list[AxisExample]:
    """GPTeacher Roleplay-Instruct ({instruction, input, response})."""
    return _read_instruction_list(
        resolve_data_dir(data_dir), "gpteacher_roleplay", warnings, response_field="response", exclude=exclude
    )


def read_gpteacher_codegen(
    data_dir: str | Path, warnings: list[str], exclude: set[int] | None = None, limit: int | None = CODEGEN_CAP
) -> list[AxisExample]:
    """GPTeacher Code-Instruct, capped to the first `limit` usable rows (default 1500)."""
    return _read_instruction_list(
        resolve_data_dir(data_dir),
        "gpteacher_codegen",
        warnings,
        response_field="response",
        exclude=exclude,
        limit=limit,
    )


def read_self_instruct_seed(data_dir: str | Path, warnings: list[str]) -> list[AxisExample]:
    """Self-Instruct seed tasks: instruction + each instance's input -> its output."""
    data_dir = resolve_data_dir(data_dir)
    path = _file(data_dir, SOURCE_FILES["self_instruct_seed"])
    out = []
    for rowno, row in _iter_jsonl(path, warnings):
        instruction = _text(row.get("instruction")) if isinstance(row, dict) else None
        instances = row.get("instances") if isinstance(row, dict) else None
        if not instruction or not isinstance(instances, list) or not instances:
            warnings.append(f"{path.name}: row {rowno}: missing 'instruction' or 'instances'; skipped")
            continue
        for k, inst in enumerate(instances):
            response = _text(inst.get("output")) if isinstance(inst, dict) else None
            extra = _text(inst.get("input", "")) if isinstance(inst, dict) else None
            if not response or extra is None:
                warnings.append(f"{path.name}: row {rowno}: instance {k} malformed; skipped")
                continue
            out.append(
                _example(
                    "self_instruct_seed",
                    rowno - 1,
                    "helpful",
                    _join(instruction, extra),
                    response,
                    suffix=f".{k}" if len(instances) > 1 else "",
                    meta={"task": row.get("id", ""), "is_classification": bool(row.get("is_classification"))},
                )
            )
    return out


def read_alpacaeval(data_dir: str | Path, warnings: list[str], with_references: bool = False) -> list[AxisExample]:
    """AlpacaEval 805 prompts with the GPT-4-1106 reference output as response; split by question.

    With `with_references`, `meta["references"]` maps generator -> output for all three reference
    files that are present (gpt4_1106_preview, text_davinci_003, alpaca_7b).
    """
    data_dir = resolve_data_dir(data_dir)
    path = _file(data_dir, SOURCE_FILES["alpacaeval"])
    refs: dict[str, dict[str, str]] = {}
    if with_references:
        for source, gen in (("alpacaeval_davinci003", "text_davinci_003"), ("alpacaeval_alpaca7b", "alpaca_7b")):
            ref_path = data_dir / SOURCE_FILES[source]
            if not ref_path.is_file():
                warnings.append(f"{ref_path.name}: missing; AlpacaEval references from {gen} left out")
                continue
            for row in _read_json_list(ref_path):
                if isinstance(row, dict) and isinstance(row.get("instruction"), str):
                    refs.setdefault(normalize_key(row["instruction"]), {})[gen] = str(row.get("output", ""))
    out = []
    for rowno, row in enumerate(_read_json_list(path), start=1):
        prompt = _text(row.get("instruction")) if isinstance(row, dict) else None
        response = _text(row.get("output")) if isinstance(row, dict) else None
        if not prompt or response is None:
            warnings.append(f"{path.name}: row {rowno}: missing 'instruction'/'output'; skipped")
            continue
        meta: dict[str, Any] = {"dataset": row.get("dataset", "")}
        if with_references:
            meta["references"] = {"gpt4_1106_preview": response, **refs.get(normalize_key(prompt), {})}
        out.append(_example("alpacaeval", rowno - 1, "helpful", prompt, response, meta=meta))
    return out


# --------------------------------------------------------------------------------------------
# harmless

_HH_TURN = re.compile(r"\n\n(Human|Assistant):")


def parse_hh_transcript(text: str) -> list[tuple[str, str]]:
    """'\\n\\nHuman: ..\\n\\nAssistant: ..' -> [(role, text), ...] with roles 'Human'/'Assistant'."""
    parts = _HH_TURN.split(text)
    # parts = [prefix, role1, text1, role2, text2, ...]
    return [(parts[i], parts[i + 1].strip()) for i in range(1, len(parts) - 1, 2)]


def read_safety_llamas(data_dir: str | Path, warnings: list[str]) -> list[AxisExample]:
    """safety-tuned-llamas safety-only training data: harmful request -> safe answer."""
    return _read_instruction_list(resolve_data_dir(data_dir), "safety_llamas", warnings, axis="harmless")


def read_hh_harmless(data_dir: str | Path, warnings: list[str]) -> list[AxisExample]:
    """HH-RLHF harmless-base test: first Human turn -> first Assistant turn of `chosen`."""
    data_dir = resolve_data_dir(data_dir)
    path = _file(data_dir, SOURCE_FILES["hh_harmless"])
    out = []
    for rowno, row in _iter_jsonl(path, warnings):
        chosen = row.get("chosen") if isinstance(row, dict) else None
        turns = parse_hh_transcript(chosen) if isinstance(chosen, str) else []
        if len(turns) < 2 or turns[0][0] != "Human" or turns[1][0] != "Assistant" or not turns[0][1] or not turns[1][1]:
            warnings.append(f"{path.name}: row {rowno}: no Human/Assistant first exchange in 'chosen'; skipped")
            continue
        out.append(
            _example("hh_harmless", rowno - 1, "harmless", turns[0][1], turns[1][1], meta={"turns": len(turns)})
        )
    return out


# --------------------------------------------------------------------------------------------
# honest


def _split_answers(text: str | None) -> list[str]:
    return [a.strip() for a in (text or "").split(";") if a.strip()]


def read_truthfulqa(data_dir: str | Path, warnings: list[str], extra_correct: bool = True) -> list[AxisExample]:
    """TruthfulQA v1: question -> best answer (+ each other correct answer), split by question."""
    data_dir = resolve_data_dir(data_dir)
    path = _file(data_dir, SOURCE_FILES["truthfulqa"])
    out = []
    for rowno, row in _iter_csv(path, ("Question", "Best Answer")):
        question, best = _text(row.get("Question")), _text(row.get("Best Answer"))
        if not question or not best:
            warnings.append(f"{path.name}: row {rowno}: empty 'Question' or 'Best Answer'; skipped")
            continue
        key = normalize_key(question)
        meta = {
            "type": row.get("Type", ""),
            "category": row.get("Category", ""),
            "correct_answers": _split_answers(row.get("Correct Answers")),
            "incorrect_answers": _split_answers(row.get("Incorrect Answers")),
        }
        out.append(_example("truthfulqa", rowno - 1, "honest", question, best, split_key=key, meta=meta))
        if extra_correct:
            seen = {normalize_key(best)}
            for k, ans in enumerate(meta["correct_answers"]):
                if normalize_key(ans) in seen:
                    continue
                seen.add(normalize_key(ans))
                out.append(
                    _example(
                        "truthfulqa", rowno - 1, "honest", question, ans,
                        split_key=key, suffix=f".c{k}", meta={"category": meta["category"], "variant": "correct_answer"},
                    )
                )
    return out


_QA = re.compile(r"^Q:\s*(?P<q>.*?)\nA:\s*(?P<a>.*?)\n(?:True|Helpful):\s*$", re.S)


def read_truthfulqa_judge(data_dir: str | Path, warnings: list[str]) -> list[AxisExample]:
    """finetune_truth.jsonl rows judged true (completion " yes") -> (question, answer), split by question.

    Rows judged " no" are skipped silently (they are untrue answers, not malformed rows).
    Duplicate (question, answer) pairs are kept once.
    """
    data_dir = resolve_data_dir(data_dir)
    path = _file(data_dir, SOURCE_FILES["truthfulqa_judge"])
    out = []
    seen: set[tuple[str, str]] = set()
    for rowno, row in _iter_jsonl(path, warnings):
        prompt = row.get("prompt") if isinstance(row, dict) else None
        completion = row.get("completion") if isinstance(row, dict) else None
        m = _QA.match(prompt) if isinstance(prompt, str) else None
        if not m or not isinstance(completion, str):
            warnings.append(f"{path.name}: row {rowno}: not a 'Q: ..\\nA: ..\\nTrue:' prompt with a completion; skipped")
            continue
        if completion.strip().lower() != "yes":
            continue
        question, answer = m["q"].strip(), m["a"].strip()
        if not question or not answer:
            continue
        pair = (normalize_key(question), normalize_key(answer))
        if pair in seen:
            continue
        seen.add(pair)
        out.append(
            _example("truthfulqa_judge", rowno - 1, "honest", question, answer, split_key=pair[0], meta={"variant": "judge_true"})
        )
    return out


def read_truthfulqa_mc(data_dir: str | Path, warnings: list[str]) -> list[AxisExample]:
    """TruthfulQA v1 MC1/MC2 (eval-only): meta has `mc1_targets`/`mc2_targets` (answer -> 0/1)."""
    data_dir = resolve_data_dir(data_dir)
    path = _file(data_dir, SOURCE_FILES["truthfulqa_mc"])
    out = []
    for rowno, row in enumerate(_read_json_list(path), start=1):
        q = _text(row.get("question")) if isinstance(row, dict) else None
        mc1 = row.get("mc1_targets") if isinstance(row, dict) else None
        mc2 = row.get("mc2_targets") if isinstance(row, dict) else None
        if not q or not isinstance(mc1, dict) or not isinstance(mc2, dict) or not mc1 or not mc2:
            warnings.append(f"{path.name}: row {rowno}: missing 'question'/'mc1_targets'/'mc2_targets'; skipped")
            continue
        out.append(
            _example("truthfulqa_mc", rowno - 1, "honest", q, "", split_key=normalize_key(q),
                     meta={"mc1_targets": dict(mc1), "mc2_targets": dict(mc2)})
        )
    return out


# --------------------------------------------------------------------------------------------
# evaluation-only prompt sets


def read_xstest(data_dir: str | Path, warnings: list[str]) -> list[AxisExample]:
    """XSTest v2 prompts: unsafe -> axis "harmless"; safe -> axis "" with meta label "safe"."""
    data_dir = resolve_data_dir(data_dir)
    path = _file(data_dir, SOURCE_FILES["xstest"])
    out = []
    for rowno, row in _iter_csv(path, ("prompt", "type", "label")):
        prompt, label = _text(row.get("prompt")), _text(row.get("label"))
        if not prompt or label not in ("safe", "unsafe"):
            warnings.append(f"{path.name}: row {rowno}: empty prompt or label not safe/unsafe; skipped")
            continue
        out.append(
            _example(
                "xstest", row.get("id") or rowno - 1, "harmless" if label == "unsafe" else "", prompt, "",
                meta={"type": row.get("type", ""), "label": label, "focus": row.get("focus", ""), "note": row.get("note", "")},
            )
        )
    return out


def read_xstest_completions(data_dir: str | Path, warnings: list[str]) -> list[AxisExample]:
    """XSTest human-labelled completions of five models (for validating a refusal detector).

    `response` is the model's completion; meta: model, type, final_label
    ("1_full_compliance" / "2_full_refusal" / "3_partial_refusal"), label (safe/unsafe from the
    prompt file when present, else from the type: XSTest's contrast types start with "contrast_").
    """
    data_dir = resolve_data_dir(data_dir)
    out = []
    for model in XSTEST_COMPLETION_MODELS:
        path = _file(data_dir, XSTEST_COMPLETIONS_FILE.format(model=model))
        for rowno, row in _iter_csv(path, ("prompt", "completion", "final_label")):
            prompt = _text(row.get("prompt"))
            completion = row.get("completion")
            final = _text(row.get("final_label"))
            if not prompt or completion is None or not final:
                warnings.append(f"{path.name}: row {rowno}: empty prompt/completion/final_label; skipped")
                continue
            kind = row.get("type", "") or ""
            label = "unsafe" if kind.startswith("contrast") else "safe"
            out.append(
                _example(
                    f"xstest_completions_{model}", row.get("id") or rowno - 1,
                    "harmless" if label == "unsafe" else "", prompt, completion.strip(),
                    meta={"model": model, "type": kind, "label": label, "final_label": final},
                )
            )
    return out


def read_beavertails(data_dir: str | Path, warnings: list[str]) -> list[AxisExample]:
    """BeaverTails-Evaluation: 700 harmful prompts in 14 categories (axis harmless)."""
    data_dir = resolve_data_dir(data_dir)
    path = _file(data_dir, SOURCE_FILES["beavertails"])
    out = []
    for rowno, row in _iter_csv(path, ("prompt", "category")):
        prompt = _text(row.get("prompt"))
        if not prompt:
            warnings.append(f"{path.name}: row {rowno}: empty prompt; skipped")
            continue
        out.append(
            _example("beavertails", rowno - 1, "harmless", prompt, "",
                     meta={"category": row.get("category", ""), "category_id": row.get("category_id", ""), "label": "unsafe"})
        )
    return out


def read_advbench(data_dir: str | Path, warnings: list[str]) -> list[AxisExample]:
    """AdvBench harmful behaviours: goal -> (no response); meta target is the attack's target string."""
    data_dir = resolve_data_dir(data_dir)
    path = _file(data_dir, SOURCE_FILES["advbench"])
    out = []
    for rowno, row in _iter_csv(path, ("goal",)):
        goal = _text(row.get("goal"))
        if not goal:
            warnings.append(f"{path.name}: row {rowno}: empty goal; skipped")
            continue
        out.append(_example("advbench", rowno - 1, "harmless", goal, "", meta={"target": row.get("target", ""), "label": "unsafe"}))
    return out


def read_stl_eval(data_dir: str | Path, source: str, warnings: list[str]) -> list[AxisExample]:
    """One safety-tuned-llamas evaluation set ({instructions[], inputs[], tags[]?})."""
    if source not in STL_EVAL_SETS:
        raise ValueError(f"unknown safety-tuned-llamas evaluation set {source!r}; known: {sorted(STL_EVAL_SETS)}")
    data_dir = resolve_data_dir(data_dir)
    path = _file(data_dir, SOURCE_FILES[source])
    data = _read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("instructions"), list):
        raise DataError(f"data file {path.name}: expected an object with an 'instructions' list")
    inputs = data.get("inputs") or []
    tags = data.get("tags") or []
    label = STL_EVAL_SETS[source]
    out = []
    for rowno, instruction in enumerate(data["instructions"], start=1):
        text = _text(instruction)
        if not text:
            warnings.append(f"{path.name}: row {rowno}: empty or non-text instruction; skipped")
            continue
        extra = _text(inputs[rowno - 1]) if rowno - 1 < len(inputs) else ""
        meta: dict[str, Any] = {"label": label}
        if rowno - 1 < len(tags):
            meta["tags"] = tags[rowno - 1]
        out.append(_example(source, rowno - 1, "harmless" if label == "unsafe" else "", _join(text, extra or ""), "", meta=meta))
    return out


# --------------------------------------------------------------------------------------------
# top level


def _cap(examples: list[AxisExample], n: int) -> list[AxisExample]:
    """A deterministic sample of n examples (by stable hash of the id), in original order."""
    if len(examples) <= n:
        return examples
    keep = {e.id for e in sorted(examples, key=lambda e: stable_rank(e.id))[:n]}
    return [e for e in examples if e.id in keep]


def load_eval_sets(data_dir: str | Path, warnings: list[str] | None = None) -> dict[str, list[AxisExample]]:
    """Evaluation-only sets by name.

    Names: xstest, xstest_completions, beavertails, advbench, stl_malicious, stl_qharm, stl_cona,
    stl_controversial, stl_physical_unsafe, stl_alpaca, stl_physical_safe, truthfulqa_mc,
    alpacaeval (with `meta["references"]` of all three reference generators). Pass a list as
    `warnings` to collect skipped-row warnings.
    """
    data_dir = resolve_data_dir(data_dir)
    warns = warnings if warnings is not None else []
    sets: dict[str, list[AxisExample]] = {
        "xstest": read_xstest(data_dir, warns),
        "xstest_completions": read_xstest_completions(data_dir, warns),
        "beavertails": read_beavertails(data_dir, warns),
        "advbench": read_advbench(data_dir, warns),
    }
    for name in STL_EVAL_SETS:
        sets[name] = read_stl_eval(data_dir, name, warns)
    sets["truthfulqa_mc"] = read_truthfulqa_mc(data_dir, warns)
    sets["alpacaeval"] = read_alpacaeval(data_dir, warns, with_references=True)
    return sets


def _eval_only_prompt_keys(data_dir: Path, warnings: list[str]) -> set[str]:
    """Normalised prompts of the harmful/benign evaluation-only sets (for decontamination)."""
    keys: set[str] = set()
    readers: list[Callable[[], list[AxisExample]]] = [
        lambda: read_xstest(data_dir, warnings),
        lambda: read_beavertails(data_dir, warnings),
        lambda: read_advbench(data_dir, warnings),
        *[(lambda n=n: read_stl_eval(data_dir, n, warnings)) for n in STL_EVAL_SETS],
    ]
    for read in readers:
        try:
            keys.update(normalize_key(e.prompt) for e in read())
        except DataError as exc:
            warnings.append(f"decontamination: {exc}")
    return keys


def load_axis_data(
    data_dir: str | Path = DEFAULT_DATA_DIR,
    *,
    quick: bool = False,
    max_per_source: int | None = None,
    extra_correct_answers: bool = True,
    decontaminate: bool = True,
) -> LoadResult:
    """All training-role examples (three axes, all splits) from the data directory.

    - The AlpacaEval-overlap rows of `EXCLUDE_alpacaeval_overlap.json` are dropped.
    - Exact duplicates (same axis, prompt and response) are kept once.
    - With `decontaminate`, training examples whose prompt equals (normalised) a prompt of an
      evaluation-only set (XSTest, BeaverTails, AdvBench, safety-tuned-llamas evaluation) are
      dropped (Q-Harm, for one, is drawn from HH-RLHF harmless).
    - `max_per_source` keeps a deterministic sample of at most that many examples per source.
    - `quick` keeps a deterministic sample of `QUICK_PER_AXIS` examples per axis and split.

    Raises DataError for a missing directory or file; malformed rows become warnings.
    """
    root = resolve_data_dir(data_dir)
    warnings: list[str] = []
    dropped: dict[str, int] = {}
    excl = load_exclusions(root)
    if not excl:
        warnings.append(f"{EXCLUDE_FILE} not found: AlpacaEval-overlap rows were NOT dropped")
    for fname, rows in excl.items():
        dropped["alpacaeval_overlap_excluded"] = dropped.get("alpacaeval_overlap_excluded", 0) + len(rows)

    def ex(source: str) -> set[int]:
        return excl.get(SOURCE_FILES[source], set())

    per_source: dict[str, list[AxisExample]] = {
        "lima": read_lima(root, warnings, ex("lima")),
        "dolly": read_dolly(root, warnings, ex("dolly")),
        "alpaca_gpt4_demo": read_alpaca_gpt4_demo(root, warnings, ex("alpaca_gpt4_demo")),
        "alpaca_cleaned": read_alpaca_cleaned(root, warnings, ex("alpaca_cleaned")),
        "self_instruct_seed": read_self_instruct_seed(root, warnings),
        "gpteacher_roleplay": read_gpteacher_roleplay(root, warnings, ex("gpteacher_roleplay")),
        "gpteacher_codegen": read_gpteacher_codegen(root, warnings, ex("gpteacher_codegen")),
        "alpacaeval": read_alpacaeval(root, warnings),
        "safety_llamas": read_safety_llamas(root, warnings),
        "hh_harmless": read_hh_harmless(root, warnings),
        "truthfulqa": read_truthfulqa(root, warnings, extra_correct=extra_correct_answers),
        "truthfulqa_judge": read_truthfulqa_judge(root, warnings),
    }
    eval_keys = _eval_only_prompt_keys(root, warnings) if decontaminate else set()

    examples: list[AxisExample] = []
    seen: set[tuple[str, str, str]] = set()
    for source, items in per_source.items():
        kept = []
        for e in items:
            sig = (e.axis, normalize_key(e.prompt), normalize_key(e.response))
            if sig in seen:
                dropped["duplicate"] = dropped.get("duplicate", 0) + 1
                continue
            if normalize_key(e.prompt) in eval_keys:
                dropped["eval_prompt_overlap"] = dropped.get("eval_prompt_overlap", 0) + 1
                continue
            seen.add(sig)
            kept.append(e)
        if max_per_source is not None and len(kept) > max_per_source:
            dropped["max_per_source"] = dropped.get("max_per_source", 0) + len(kept) - max_per_source
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


def load_hf_dataset(
    name: str, axis: str, prompt_field: str, response_field: str | None, split: str = "train"
) -> list[AxisExample]:
    """Examples from a Hugging Face hub dataset (needs the optional `datasets` package and network).

    `split` is the hub split to read; the project's own split of each row is still the hash of its
    normalised prompt. `response_field=None` gives prompts with empty responses.
    """
    if axis not in AXES and axis != "":
        raise ValueError(f"axis must be one of {AXES} or '', got {axis!r}")
    try:
        import datasets  # noqa: PLC0415 (optional dependency, imported lazily)
    except ImportError as exc:
        raise DataError(
            "loading hub datasets needs the optional 'datasets' package: pip install datasets"
        ) from exc
    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as exc:  # noqa: BLE001 (offline, unknown name, gated, ...)
        raise DataError(
            f"could not load hub dataset {name!r} (split {split!r}): {exc}. The hub may be unreachable "
            f"(offline machine) or the name wrong; use the offline files in --data-dir instead."
        ) from exc
    columns = list(getattr(ds, "column_names", []) or [])
    for col in (prompt_field, response_field):
        if col is not None and columns and col not in columns:
            raise DataError(f"hub dataset {name!r} has no column {col!r} (columns: {columns})")
    source = "hf:" + name
    out = []
    for i, row in enumerate(ds):
        prompt = _text(row.get(prompt_field))
        response = _text(row.get(response_field)) if response_field else ""
        if not prompt or response is None:
            continue
        out.append(_example(source, i, axis, prompt, response, meta={"hf_split": split}))
    return out


# --------------------------------------------------------------------------------------------
# summaries


def summarize(examples: Iterable[AxisExample]):  # -> pandas.DataFrame
    """Counts of examples per axis, split and source, as a pandas DataFrame.

    Columns: axis, source, train, calibration, eval, total (axis "" shown as "(unlabelled)").
    """
    import pandas as pd  # noqa: PLC0415 (keep pandas out of the import path of light users)

    rows = [{"axis": e.axis or "(unlabelled)", "source": e.source, "split": e.split} for e in examples]
    if not rows:
        return pd.DataFrame(columns=["axis", "source", *SPLITS, "total"])
    df = pd.DataFrame(rows)
    table = df.groupby(["axis", "source", "split"]).size().unstack("split", fill_value=0)
    for s in SPLITS:
        if s not in table.columns:
            table[s] = 0
    table = table[list(SPLITS)]
    table["total"] = table.sum(axis=1)
    return table.reset_index()


def summary_counts(examples: Iterable[AxisExample]) -> dict[str, dict[str, int]]:
    """{axis: {split: count}} (plain dict, JSON-friendly)."""
    out: dict[str, dict[str, int]] = {}
    for e in examples:
        d = out.setdefault(e.axis or "(unlabelled)", {s: 0 for s in SPLITS})
        d[e.split] += 1
    return out


def format_summary(examples: Iterable[AxisExample]) -> str:
    """A printable table: per source rows, then per axis totals."""
    examples = list(examples)
    table = summarize(examples)
    if table.empty:
        return "(no examples)"
    lines = [table.to_string(index=False), ""]
    by_axis = table.groupby("axis")[[*SPLITS, "total"]].sum()
    lines.append(by_axis.to_string())
    return "\n".join(lines)


def xstest_routing_set(items: Iterable[AxisExample], splits: tuple[str, ...]) -> list[AxisExample]:
    """XSTest prompts labelled for routing, as a shifted set: safe-but-scary prompts deserve an
    answer (axis "helpful"), unsafe ones a refusal (axis "harmless"). Only the given splits."""
    return [
        AxisExample(e.id, "harmless" if e.meta.get("label") == "unsafe" else "helpful", e.prompt, "", e.source, e.split, e.meta)
        for e in items
        if e.split in splits
    ]
