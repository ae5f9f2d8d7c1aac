"""Encoding axis examples into token-id sets and right-padded batches with response-only labels.

Shared by training (Stage 1, Stage 2, the SFT baselines) and evaluation (held-out loss), so that
evaluation needs no training code. Examples are encoded in the chat format
(`templates.encode_example`, optionally with an axis preamble) and cut at `max_len` tokens from
the right: the prompt is kept whole and the answer is what gets cut; an example whose prompt leaves
no room for an answer is dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from alignx_demo.config import AXES
from alignx_demo.data import templates
from alignx_demo.data.records import AxisExample


@dataclass
class EncodedSet:
    """Token ids, response start index and axis index of each example, the length of the template
    prefix all prompts share (`templates.template_prefix_length`), and which examples' responses are
    learned as text (`teach`; None: all) — a mismatched continuation or the model's own answer
    (`meta["mismatched"]`, `meta["own_answer"]`) is routed, not imitated."""

    ids: list[list[int]]
    starts: list[int]
    axes: list[int]
    prefix: int = 0
    teach: list[bool] | None = None

    def __len__(self) -> int:
        return len(self.ids)


def encode_set(
    tokenizer: Any,
    examples: Sequence[AxisExample],
    max_len: int,
    preamble: Callable[[str], str | None] = lambda axis: None,
    axes: Sequence[str] = AXES,
) -> EncodedSet:
    """Encode examples (prompt + response), truncated to `max_len` tokens; `preamble(axis)` injects; each
    example's axis is recorded as its index in `axes` (the model's)."""
    ids, starts, labels, teach = [], [], [], []
    for example in examples:
        seq, start = templates.encode_example(tokenizer, example.prompt, example.response, preamble(example.axis))
        if start >= max_len - 1:  # a prompt that leaves no room for the answer teaches nothing
            continue
        ids.append(seq[:max_len])
        starts.append(start)
        labels.append(axes.index(example.axis))
        teach.append(not (example.meta.get("mismatched") or example.meta.get("own_answer")))
    return EncodedSet(ids, starts, labels, templates.template_prefix_length(tokenizer), None if all(teach) else teach)


def make_batch(data: EncodedSet, indices: Sequence[int], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch with labels −100 on prompt and padding tokens, and the masks of each
    row's prompt span (after the shared template prefix) and response span."""
    width = max(len(data.ids[i]) for i in indices)
    input_ids = torch.full((len(indices), width), pad_id, dtype=torch.long)
    labels = torch.full_like(input_ids, -100)
    mask, prompt_mask, response_mask = (torch.zeros_like(input_ids) for _ in range(3))
    for row, i in enumerate(indices):
        seq = torch.tensor(data.ids[i])
        input_ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
        prompt_mask[row, min(data.prefix, data.starts[i] - 1) : data.starts[i]] = 1
        response_mask[row, data.starts[i] : len(seq)] = 1
        if data.teach is None or data.teach[i]:
            labels[row, data.starts[i] : len(seq)] = seq[data.starts[i] :]
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels, "prompt_mask": prompt_mask,
            "response_mask": response_mask, "axis": torch.tensor([data.axes[i] for i in indices])}
