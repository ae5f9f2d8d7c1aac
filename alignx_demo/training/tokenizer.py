"""Byte-level BPE tokenizer for the demo model, trained with the `tokenizers` library.

Training text: prompts and responses of the train split only, balanced across the three axes (each
axis contributes at most as many characters as the smallest axis has, times `axis_char_ratio`),
so that the frequent phrasing of one axis (safety refusals) does not dominate the merges.

The result is saved as a `transformers` PreTrainedTokenizerFast folder: the chat-marker strings of
`templates.SPECIAL_TOKENS` are registered as special tokens (ids 0..5, in that order), bos/eos/pad
are the template's BOS/EOS/PAD, there is no post-processor (the template adds BOS itself) and no
`chat_template` (so `templates.encode_prompt` uses the project's own format). Typed special-token
strings stay plain text when encoded with `split_special_tokens=True`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from alignx_demo.config import AXES
from alignx_demo.data import templates
from alignx_demo.data.records import AxisExample, stable_rank

DEFAULT_VOCAB_SIZE = 8192
QUICK_VOCAB_SIZE = 1024


def balanced_texts(
    examples: Sequence[AxisExample], *, axis_char_ratio: float = 1.5, split: str = "train"
) -> list[str]:
    """Prompt and response texts of `split`, with each axis capped at `ratio` x the smallest axis's characters."""
    per_axis: dict[str, list[AxisExample]] = {a: [] for a in AXES}
    for e in examples:
        if e.split == split and e.axis in per_axis:
            per_axis[e.axis].append(e)
    sizes = {a: sum(len(e.prompt) + len(e.response) for e in items) for a, items in per_axis.items() if items}
    if not sizes:
        raise ValueError(f"no labelled {split}-split examples to train a tokenizer on")
    budget = int(min(sizes.values()) * axis_char_ratio)
    texts: list[str] = []
    for axis, items in per_axis.items():
        used = 0
        for e in sorted(items, key=lambda e: stable_rank(e.id)):
            if used >= budget:
                break
            texts.append(e.prompt)
            if e.response:
                texts.append(e.response)
            used += len(e.prompt) + len(e.response)
    return texts


def train_tokenizer(
    texts: Sequence[str] | Iterator[str],
    out_dir: str | Path,
    *,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    min_frequency: int = 2,
    model_max_length: int = 256,
    show_progress: bool = False,
):
    """Train a byte-level BPE tokenizer on `texts`, save it to `out_dir`, return it (PreTrainedTokenizerFast)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: PLC0415
    from transformers import PreTrainedTokenizerFast  # noqa: PLC0415

    if vocab_size < 256 + len(templates.SPECIAL_TOKENS) + 1:
        raise ValueError(f"vocab_size must exceed the 256 byte symbols plus special tokens, got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(templates.SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    tok.train_from_iterator(iter(texts), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=templates.BOS,
        eos_token=templates.EOS,
        pad_token=templates.PAD,
        additional_special_tokens=[templates.SYSTEM, templates.USER, templates.ASSISTANT],
        model_max_length=model_max_length,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out))
    return fast


def build_tokenizer(
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    quick: bool = False,
    vocab_size: int | None = None,
    max_per_source: int | None = None,
    model_max_length: int = 256,
    show_progress: bool = True,
) -> dict:
    """Load the axis data, train the tokenizer on balanced train-split text, save it; return a summary dict.

    The summary is also written to `out_dir/tokenizer_summary.json`.
    """
    from alignx_demo.data.readers import load_axis_data  # noqa: PLC0415

    t0 = time.time()
    data = load_axis_data(data_dir, quick=quick, max_per_source=max_per_source)
    texts = balanced_texts(data.examples)
    vocab = vocab_size or (QUICK_VOCAB_SIZE if quick else DEFAULT_VOCAB_SIZE)
    fast = train_tokenizer(
        texts, out_dir, vocab_size=vocab, model_max_length=model_max_length, show_progress=show_progress
    )
    summary = {
        "vocab_size": len(fast),
        "requested_vocab_size": vocab,
        "special_tokens": list(templates.SPECIAL_TOKENS),
        "texts": len(texts),
        "chars": sum(len(t) for t in texts),
        "quick": quick,
        "seconds": round(time.time() - t0, 2),
        "data_warnings": len(data.warnings),
    }
    (Path(out_dir) / "tokenizer_summary.json").write_text(json.dumps(summary, indent=2))
    return summary
