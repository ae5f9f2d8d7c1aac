"""The table of data sources: one declarative `Source` per file (or evaluation set) in the data
directory, in the style of lm-evaluation-harness task configs.

A unit says where its rows are (`file`, `format`), how a row becomes an example (`parser` plus the
field mapping `prompt` / `input` / `response` / `meta`), which HHH axis its examples teach
(`axis`, "" for unlabelled prompts) and what it is for (`role`: "train" sources feed
`readers.load_axis_data`, "eval" sets feed `readers.load_eval_sets` and are never trained on).
Adding a source is one row here; `readers.py` holds the few parsers the rows name.

Every example is split by the hash of its normalised prompt. For the question sets (TruthfulQA,
its judge file, AlpacaEval) the prompt *is* the question, so every answer to one question lands in
the same split: "split by question" needs no rule of its own.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

Format = Literal["json", "jsonl", "csv", "columns"]
"""json: a JSON list of objects; jsonl: one object per line (gzip-compressed when the name ends in
.gz); csv: a header row, then rows; columns: one JSON object of parallel lists, row i being item i
of each list (safety-tuned-llamas evaluation sets)."""

Parser = Literal[
    "fields", "lima", "self_instruct", "hh", "truthfulqa", "truthfulqa_judge", "truthfulqa_mc",
    "xstest", "xstest_completions", "alpacaeval", "mt_bench",
]
"""Key of `readers.PARSERS`. "fields" is the generic one: prompt (+ input) -> response, as mapped."""

Role = Literal["train", "eval"]


@dataclass(frozen=True)
class Source:
    """One source: where its rows are and how they become `AxisExample`s.

    Attributes:
        name: short name: the examples' `source` and id prefix, the eval-set name, the
            `SOURCE_FILES` key.
        file: file name in the data directory (with "{variant}" when `variants` is set).
        format: how the file is split into rows (see `Format`).
        parser: how a row becomes examples (see `Parser`).
        axis: the examples' HHH axis, "" for unlabelled prompts (XSTest labels its rows itself).
        role: "train" (training data, all three splits) or "eval" (evaluation-only prompt set).
        prompt: row field holding the prompt (the instruction or question).
        input: row field appended to the prompt after a blank line, if any.
        response: row field holding the response (or what the parser reads it from); None: prompts
            only.
        meta: (meta key, row field) pairs copied into `meta` when the row has the field.
        fixed_meta: (meta key, value) pairs added to every example's `meta`.
        cap: keep only the first `cap` examples (the rest of the file is not read).
        decontaminate: training examples whose normalised prompt equals one of this set's prompts
            are dropped.
        references: (generator, short name, file) of reference outputs for the same prompts; the
            entry whose file is `file` is this source's own response.
        variants: one file per variant (`file` formatted with it); examples get source
            "<name>_<variant>" and `meta["model"]`.
    """

    name: str
    file: str
    format: Format
    parser: Parser
    axis: str
    role: Role
    prompt: str = "prompt"
    input: str | None = None
    response: str | None = None
    meta: tuple[tuple[str, str], ...] = ()
    fixed_meta: tuple[tuple[str, Any], ...] = ()
    cap: int | None = None
    decontaminate: bool = False
    references: tuple[tuple[str, str, str], ...] = ()
    variants: tuple[str, ...] = ()

    def columns(self) -> tuple[str, ...]:
        """Every row field the unit names (a CSV file must have all of them)."""
        named = (self.prompt, self.input, self.response, *(col for _, col in self.meta))
        return tuple(dict.fromkeys(c for c in named if c))


def _instructions(name: str, file: str, *, axis: str = "helpful", response: str = "output", **kw: Any) -> Source:
    """An Alpaca-format list {instruction, input, output|response} read by the generic parser."""
    fmt: Format = "jsonl" if file.endswith(".jsonl") else "json"
    return Source(name, file, fmt, "fields", axis, "train", prompt="instruction", input="input", response=response,
                  **kw)


def _stl_eval(name: str, file: str, label: str) -> Source:
    """A safety-tuned-llamas evaluation set: harmful ("unsafe") or benign control ("safe") prompts."""
    return Source(
        f"stl_{name}", f"vinid__safety-tuned-llamas__data__evaluation__{file}.json", "columns", "fields",
        "harmless" if label == "unsafe" else "", "eval", prompt="instructions", input="inputs",
        meta=(("tags", "tags"),), fixed_meta=(("label", label),), decontaminate=True,
    )


_ALPACAEVAL = "tatsu-lab__alpaca_eval__results__{}__model_outputs.json"
_AE_FILE = _ALPACAEVAL.format("gpt4_1106_preview")
_AE_REFERENCES = (
    ("gpt4_1106_preview", "alpacaeval", _AE_FILE),
    ("text_davinci_003", "alpacaeval_davinci003", _ALPACAEVAL.format("text_davinci_003")),
    ("alpaca_7b", "alpacaeval_alpaca7b", _ALPACAEVAL.format("alpaca-7b")),
)

XSTEST_COMPLETION_MODELS = ("gpt4", "llama2new", "llama2orig", "mistralguard", "mistralinstruct")
XSTEST_COMPLETIONS_FILE = "paul-rottger__exaggerated-safety__model_completions__xstest_v2_completions_{variant}.csv"

SOURCES: tuple[Source, ...] = (
    # helpful: training (AlpacaEval split by question), then AlpacaEval with all three references
    Source("lima", "hiyouga__LLaMA-Factory__data__lima.json", "json", "lima", "helpful", "train",
           prompt="instruction", input="input", response="output"),
    _instructions("dolly", "Ara-O__adversarial-llm__datasets__dolly_unused_5k.jsonl"),
    _instructions("alpaca_gpt4_demo", "hiyouga__LLaMA-Factory__data__alpaca_en_demo.json"),
    _instructions("alpaca_cleaned", "lm-sys__FastChat__data__alpaca_data_cleaned_1000.json"),
    Source("self_instruct_seed", "yizhongw__self-instruct__data__seed_tasks.jsonl", "jsonl", "self_instruct", "helpful",
           "train", prompt="instruction", input="input", response="output", meta=(("task", "id"),)),
    _instructions("gpteacher_roleplay", "teknium1__GPTeacher__Roleplay__roleplay-simple-deduped-roleplay-instruct.json",
                  response="response"),
    # the codegen file is mostly code: keep its first 1500 usable rows
    _instructions("gpteacher_codegen", "teknium1__GPTeacher__Codegen__codegen-instruct.json", response="response",
                  cap=1500),
    Source("alpacaeval", _AE_FILE, "json", "fields", "helpful", "train", prompt="instruction", response="output",
           meta=(("dataset", "dataset"),)),
    Source("alpacaeval", _AE_FILE, "json", "alpacaeval", "helpful", "eval", prompt="instruction", response="output",
           meta=(("dataset", "dataset"),), references=_AE_REFERENCES),
    # harmless: training
    _instructions("safety_llamas", "vinid__safety-tuned-llamas__data__training__safety_only_data_Instructions.json",
                  axis="harmless"),
    Source("hh_harmless", "anthropics__hh-rlhf__harmless-base__test.jsonl.gz", "jsonl", "hh", "harmless", "train",
           prompt="chosen", response="chosen"),
    # honest: training (split by question), then MC1/MC2
    Source("truthfulqa", "sylinrl__TruthfulQA__data__v1__TruthfulQA.csv", "csv", "truthfulqa", "honest", "train",
           prompt="Question", response="Best Answer",
           meta=(("type", "Type"), ("category", "Category"), ("correct_answers", "Correct Answers"),
                 ("incorrect_answers", "Incorrect Answers"))),
    Source("truthfulqa_judge", "sylinrl__TruthfulQA__data__finetune_truth.jsonl", "jsonl", "truthfulqa_judge", "honest",
           "train", response="completion", fixed_meta=(("variant", "judge_true"),)),
    Source("truthfulqa_mc", "sylinrl__TruthfulQA__data__v1__mc_task.json", "json", "truthfulqa_mc", "honest", "eval",
           prompt="question", meta=(("mc1_targets", "mc1_targets"), ("mc2_targets", "mc2_targets"))),
    # safety evaluation sets: harmful prompts (axis harmless) and benign look-alikes (unlabelled)
    Source("xstest", "paul-rottger__exaggerated-safety__xstest_prompts.csv", "csv", "xstest", "harmless", "eval",
           meta=(("type", "type"), ("label", "label"), ("focus", "focus"), ("note", "note")), decontaminate=True),
    Source("xstest_completions", XSTEST_COMPLETIONS_FILE, "csv", "xstest_completions", "harmless", "eval",
           response="completion", meta=(("type", "type"), ("final_label", "final_label")),
           variants=XSTEST_COMPLETION_MODELS),
    Source("beavertails", "SwimmingChoi__Value_Analysis__data__BeaverTails-Evaluation.csv", "csv", "fields", "harmless",
           "eval", meta=(("category", "category"), ("category_id", "category_id")), fixed_meta=(("label", "unsafe"),),
           decontaminate=True),
    Source("advbench", "llm-attacks__llm-attacks__data__advbench__harmful_behaviors.csv", "csv", "fields", "harmless",
           "eval", prompt="goal", meta=(("target", "target"),), fixed_meta=(("label", "unsafe"),), decontaminate=True),
    _stl_eval("malicious", "I-MaliciousInstructions", "unsafe"),
    _stl_eval("qharm", "Q-Harm", "unsafe"),
    _stl_eval("cona", "I-CoNa", "unsafe"),
    _stl_eval("controversial", "I-Controversial", "unsafe"),
    _stl_eval("physical_unsafe", "I-PhysicalSafetyUnsafe", "unsafe"),
    _stl_eval("alpaca", "I-Alpaca", "safe"),
    _stl_eval("physical_safe", "I-PhysicalSafetySafe", "safe"),
)

TRAINING_SOURCES: tuple[Source, ...] = tuple(u for u in SOURCES if u.role == "train")
"""What `load_axis_data` reads, in this order (the order decides which duplicate is kept)."""

EVAL_SOURCES: tuple[Source, ...] = tuple(u for u in SOURCES if u.role == "eval")
"""What `load_eval_sets` reads, one evaluation set each."""

SOURCE_FILES: dict[str, str] = {
    name: file
    for u in SOURCES
    if not u.variants
    for name, file in ((u.name, u.file), *((n, f) for _, n, f in u.references))
}
"""Short name -> file name of every single-file source and AlpacaEval reference (the evaluation
report hashes these)."""


# --------------------------------------------------------------------------------------------
# out-of-distribution evaluation (read by `data.ood`; see DESIGN.md section 6)

OOD_SOURCES: tuple[Source, ...] = (
    Source("mt_bench", "lm-sys__FastChat__fastchat__llm_judge__data__mt_bench__question.jsonl", "jsonl", "mt_bench",
           "helpful", "eval", prompt="turns", meta=(("category", "category"), ("question_id", "question_id"))),
)
"""Evaluation-only sets read by `data.ood` alone (not by `load_eval_sets`, so a data directory without
them still serves every other measure). MT-Bench: the first turn of each of the 80 questions, axis
helpful — all eight categories (writing, roleplay, reasoning, math, coding, extraction, stem,
humanities) are benign tasks that deserve a full answer; none is built on a false premise or asks
for a common misconception, which is what the honest axis (TruthfulQA) teaches. Not decontaminated
against the training data (two MT-Bench first turns are AlpacaEval prompts the default training data
keeps; dropping them would change `load_axis_data`'s default output): `data.ood` leaves such prompts
out of the MT-Bench slice instead."""

OOD_SOURCE_FILES: dict[str, str] = {u.name: u.file for u in OOD_SOURCES}
"""Short name -> file name of the out-of-distribution sets (the evaluation report hashes these too)."""

HELDOUT_CATEGORY_SALT = "alignx-demo/heldout-category/v1"
HELDOUT_CATEGORY_FRACTION = 0.2


def heldout_categories(counts: Mapping[str, int], fraction: float = HELDOUT_CATEGORY_FRACTION) -> tuple[str, ...]:
    """The rule behind `TRUTHFULQA_HELDOUT_CATEGORIES`: order the categories by sha256 of
    "<salt>\\0<category>" and keep the longest prefix of that order whose questions are at most
    `fraction` of all questions (`counts`: category -> questions). Returned sorted by name."""
    order = sorted(counts, key=lambda c: hashlib.sha256(f"{HELDOUT_CATEGORY_SALT}\x00{c}".encode()).hexdigest())
    total, kept, taken = sum(counts.values()), [], 0
    for category in order:
        if taken + counts[category] > fraction * total:
            break
        kept.append(category)
        taken += counts[category]
    return tuple(sorted(kept))


TRUTHFULQA_HELDOUT_CATEGORIES: tuple[str, ...] = ("Law", "Mandela Effect", "Paranormal", "Sociology", "Subjective")
"""TruthfulQA categories held out for out-of-distribution evaluation: `heldout_categories` of the
question counts of TruthfulQA v1 (817 questions, 38 categories) — 160 questions, 19.6 %. Fixed here
so that it never moves with the data. `load_axis_data(exclude_heldout_categories=True)` drops their
questions from every split; the default (False) keeps them, so bundles trained before the switch
existed (and any run resumed from one) saw their train-split questions."""
