"""Stage 1 — prompt-injected fine-tuning of the three experts, and the axis feature banks.

Each expert is a rank-r LoRA on the MLP projections, trained alone (routing forced one-hot to it,
so only its block of the stacked matrices receives gradient) on its data role's train split
(`data.roles.expert_examples`: general answers, short refusals of harmful requests, truthful
answers that flag uncertainty), with the axis preamble of `templates.AXIS_PREAMBLES` injected as
the system turn. LM loss on the response tokens only.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from alignx_demo.config import AXES, MoCaEConfig, RoutingSettings
from alignx_demo.data.records import AxisExample
from alignx_demo.data.roles import expert_examples
from alignx_demo.data.templates import AXIS_PREAMBLES
from alignx_demo.modeling.checkpoint import load_base, save_mocae
from alignx_demo.modeling.mocae import MoCaEModel
from alignx_demo.training.common import JsonlLog, is_main_process
from alignx_demo.training.finetune import encode_set, train_loop


@dataclass
class ExpertsConfig:
    """Stage 1 settings: LoRA shape, steps per expert, batch size, learning rate, max tokens."""

    rank: int = 8
    alpha: float = 16.0
    steps: int = 400
    batch_size: int = 8
    lr: float = 2e-3
    max_len: int = 256
    seed: int = 0

    @classmethod
    def quick_recipe(cls) -> ExpertsConfig:
        return cls(steps=12, batch_size=4, max_len=128)


def one_hot(k: int) -> tuple[float, float, float]:
    return tuple(1.0 if j == k else 0.0 for j in range(len(AXES)))  # type: ignore[return-value]


def train_experts(
    out: str | Path,
    examples: list[AxisExample],
    cfg: ExpertsConfig,
    *,
    base_model: str | None = None,
    load_in_4bit: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train the three experts on `out/base` (or `base_model`, recorded instead of copied) and
    write the MoCaE checkpoint files."""
    out = Path(out)
    model, tokenizer, _, _ = load_base(base_model or out / "base", load_in_4bit=load_in_4bit)
    # experts train in fp32 whatever the base computes in (bf16 parameters would lose small AdamW updates)
    mocae = MoCaEModel(model, MoCaEConfig(rank=cfg.rank, alpha=cfg.alpha, base_model=base_model or ""), expert_dtype=torch.float32)
    log = JsonlLog(out / "logs" / "experts.jsonl")
    summary: dict[str, Any] = {"config": asdict(cfg), "experts": {}}
    for k, axis in enumerate(AXES):
        data = encode_set(tokenizer, expert_examples(tokenizer, examples, axis), cfg.max_len, preamble=lambda a: AXIS_PREAMBLES[a])
        summary["experts"][axis] = {"examples": len(data)} | train_loop(
            mocae, mocae.expert_parameters(), data,
            routing=RoutingSettings(axis_prior=one_hot(k), calibrated=False),
            steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, pad_id=tokenizer.pad_token_id,
            seed=cfg.seed + k, log=log, desc=f"expert {axis}", progress=progress,
        )
    if not is_main_process():  # every launched process holds the same trained weights; one writes
        return summary
    save_mocae(mocae, tokenizer, out, base_source=None if base_model else out / "base")
    (out / "logs" / "experts_summary.json").write_text(json.dumps(summary, indent=1))
    return summary
