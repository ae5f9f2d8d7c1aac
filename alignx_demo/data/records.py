"""The record every reader returns, and the deterministic train / calibration / eval split.

Splits are a pure function of a key string (sha256), so they are the same on every machine and in
every run, and need no split files. Readers choose the key: the normalised prompt text for
instruction data (so duplicates of one prompt, inside a file or across files, share a split), and
the normalised question text for TruthfulQA and AlpacaEval (so every variant of one question —
best answer, other correct answers, judge-training answers, MC targets — lands in the same split,
and nothing from an eval question is ever trained on).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from alignx_demo.config import AXES, AXIS_NAME

Split = Literal["train", "calibration", "eval"]
SPLITS: tuple[str, str, str] = ("train", "calibration", "eval")
"""Split names, in order. Fractions: 80 % train, 10 % calibration, 10 % eval."""

SPLIT_SALT = "alignx-demo/split/v1"
"""Salt mixed into the hash; changing it reshuffles every split (bump only on purpose)."""

_BUCKETS = 1000
_TRAIN_BUCKETS = 800
_CALIBRATION_BUCKETS = 900


@dataclass(frozen=True)
class AxisExample:
    """One prompt (and, for training data, its reference response) labelled with an axis: an HHH one for
    the project's sources, a checkpoint's own for your labelled prompts (`training.labels`).

    Attributes:
        id: unique, stable id: "<source>:<row>" plus a suffix for variants of one row.
        axis: an axis name (`config.AXIS_NAME`; `config.AXES` in the project's data), or "" for an unlabelled prompt (e.g. XSTest's safe prompts,
            which are benign but *look* harmful; their label is kept in `meta`).
        prompt: the user's request (instruction and its input joined by a blank line).
        response: the reference answer; "" for evaluation-only prompt sets.
        source: short name of the source file (see `readers.SOURCE_FILES`).
        split: "train", "calibration" or "eval" (see `split_of`).
        meta: source-specific labels (category, MC targets, refusal labels, ...).
    """

    id: str
    axis: str
    prompt: str
    response: str
    source: str
    split: str
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.axis != "" and not AXIS_NAME.match(self.axis):
            raise ValueError(f"axis must be an axis name such as {AXES[0]!r} or '', got {self.axis!r}")
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")


def normalize_key(text: str) -> str:
    """Case- and whitespace-insensitive form of a prompt or question, used as a split key."""
    return " ".join(str(text).lower().split())


def eval_prompts(examples: Iterable[AxisExample], axis: str, limit: int | None = None, split: str = "eval",
                 mixed: bool = False) -> list[AxisExample]:
    """The examples of an axis in a split (default eval) with distinct prompts: the first ones in data
    order, or with `mixed` in a fixed pseudo-random order (`stable_rank` of the prompt), so that a limited
    set mixes every source of the axis instead of taking the first file's.

    TruthfulQA gives one row per (question, correct answer), so without this a per-prompt measure
    (routing, samples) would count the same question many times. Data order made the calibration set
    (400 prompts per axis: helpful mostly dolly, harmless a third HH-RLHF) and the routing eval set
    (160: helpful mostly LIMA, harmless only safety-tuned-llamas) different mixes, so a calibration
    fitted on one was measured on another; calibration and routing evaluation use `mixed`.
    """
    first: dict[str, AxisExample] = {}
    for example in examples:
        if example.axis == axis and example.split == split:
            first.setdefault(normalize_key(example.prompt), example)
    keys = sorted(first, key=stable_rank) if mixed else list(first)
    return [first[key] for key in keys[:limit]]


def split_of(key: str) -> str:
    """Deterministic split of a key: sha256 of the salted key -> 80/10/10 train/calibration/eval.

    The key is used as given; callers that want "same question, same split" pass
    `normalize_key(question)`.
    """
    digest = hashlib.sha256(f"{SPLIT_SALT}\x00{key}".encode("utf-8")).digest()
    bucket = int.from_bytes(digest[:8], "big") % _BUCKETS
    if bucket < _TRAIN_BUCKETS:
        return "train"
    if bucket < _CALIBRATION_BUCKETS:
        return "calibration"
    return "eval"


def stable_rank(key: str) -> int:
    """A deterministic pseudo-random integer for ordering (subsampling without an RNG)."""
    return int.from_bytes(hashlib.sha256(f"order\x00{key}".encode("utf-8")).digest()[:8], "big")
