"""The comparison systems of the Axis Collapse view, each saved as a PEFT LoRA adapter folder in
`OUT/baselines/<name>/` (no preamble anywhere: these are what one gets without Stage 1):

- joint_sft: one rank-r adapter trained on the naive mix of all three axes' raw train references
  (natural proportions) — axes interfere; on the demo corpus this illustrates "too harmless";
- sequential_sft: help → harm → honest on the experts' data roles (`data.roles`); each stage
  trains a fresh rank-r adapter on one axis and is merged into the weights before the next, so
  earlier axes can be forgotten. The result is exactly the sum of the three deltas, saved as one
  rank-3r adapter (stacked A and B);
- uniform_merge: the three Stage 1 experts averaged, Σ_k ⅓·B_k A_k, saved as a rank-3r adapter.

Fair budgets: joint SFT trains for the experts' total (3 × `steps_per_axis`), sequential SFT for
one expert's budget per stage. Seeds are set before every initialisation. After each sequential
stage the held-out loss (response tokens, calibration split, `held_out` examples per axis) of every
axis is logged, and forgetting is measured as DESIGN defines it: an axis's held-out loss after the
later stages minus its loss right after its own stage (`forgetting` in the summary; only axes
trained before the last stage have one).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from alignx_demo.config import AXES, BASELINES, MoCaEConfig, RoutingSettings  # noqa: F401  (BASELINES re-exported)
from alignx_demo.data.records import AxisExample
from alignx_demo.modeling.checkpoint import load_base, load_mocae, save_lora_adapter
from alignx_demo.modeling.mocae import MoCaEModel
from alignx_demo.training.common import JsonlLog, is_main_process
from alignx_demo.data.roles import expert_examples
from alignx_demo.training.experts import ExpertsConfig, one_hot
from alignx_demo.training.finetune import encode_set, response_loss, train_loop


@dataclass
class BaselinesConfig:
    """One expert's step budget (joint SFT gets three of them, each sequential stage one); LoRA shape
    as Stage 1; held-out examples per axis for the sequential stages' losses."""

    steps_per_axis: int = ExpertsConfig.steps
    batch_size: int = 8
    lr: float = 2e-3
    max_len: int = 256
    held_out: int = 64
    seed: int = 0

    @classmethod
    def quick_recipe(cls) -> BaselinesConfig:
        return cls(steps_per_axis=6, batch_size=4, max_len=128, held_out=8)


def _merge_slot_into_base(mocae: MoCaEModel, k: int) -> None:
    """W0 ← W0 + s·B_k A_k for every target (full-precision base), then zero the slot."""
    with torch.no_grad():
        for module in mocae.expert_modules.values():
            a, b = module.expert(k)
            delta = module.scaling * (b @ a)  # (O, D)
            weight = module.base.weight
            weight += delta.T if type(module.base).__name__ == "Conv1D" else delta
            b.zero_()


def _adapter(mocae: MoCaEModel, folder: Path, pairs: dict[str, tuple[torch.Tensor, torch.Tensor]], rank: int) -> None:
    if not is_main_process():
        return
    save_lora_adapter(
        folder, pairs, rank=rank, alpha=mocae.config.scaling * rank,
        target_modules=mocae.config.target_modules, fan_in_fan_out=mocae.config.base_model_type == "gpt2",
        model_type=mocae.config.base_model_type,
    )


def train_baselines(
    out: str | Path, examples: list[AxisExample], cfg: BaselinesConfig, *, load_in_4bit: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Train and save the three baselines. The base is always loaded in full precision
    (`load_in_4bit` is accepted for a uniform CLI and ignored): sequential SFT merges into it."""
    del load_in_4bit
    out = Path(out)
    folder = out / "baselines"
    experts = load_mocae(out, load_in_4bit=False, allow_untrained=True)  # only the experts are used: routers may come later
    base_source = experts.mocae.config.base_model or out / "base"
    config = MoCaEConfig(rank=experts.mocae.config.rank, alpha=experts.mocae.config.alpha)
    tokenizer, pad = experts.tokenizer, experts.tokenizer.pad_token_id
    log = JsonlLog(out / "logs" / "baselines.jsonl")
    summary: dict[str, Any] = {"config": asdict(cfg)}
    r = config.rank

    def fresh() -> MoCaEModel:
        model, _, _, _ = load_base(base_source, load_in_4bit=False)
        torch.manual_seed(cfg.seed)  # before the LoRA init, so the seed governs it
        return MoCaEModel(model, MoCaEConfig(rank=config.rank, alpha=config.alpha), expert_dtype=torch.float32)  # fp32 AdamW updates

    train = [e for e in examples if e.split == "train" and e.response and e.axis in AXES]
    joint = fresh()
    summary["joint_sft"] = train_loop(
        joint, joint.expert_parameters(), encode_set(tokenizer, train, cfg.max_len),
        routing=RoutingSettings(axis_prior=one_hot(0), calibrated=False), steps=len(AXES) * cfg.steps_per_axis,
        batch_size=cfg.batch_size, lr=cfg.lr, pad_id=pad, seed=cfg.seed, log=log, desc="joint_sft", progress=progress,
    )
    _adapter(joint, folder / "joint_sft", {n: m.expert(0) for n, m in joint.expert_modules.items()}, r)

    sequential = fresh()
    held = {a: encode_set(tokenizer, expert_examples(tokenizer, examples, a, "calibration")[: cfg.held_out], cfg.max_len) for a in AXES}
    deltas: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {n: [] for n in sequential.expert_modules}
    stages: list[dict[str, Any]] = []
    for k, axis in enumerate(AXES):
        result = train_loop(
            sequential, sequential.expert_parameters(), encode_set(tokenizer, expert_examples(tokenizer, examples, axis), cfg.max_len),
            routing=RoutingSettings(axis_prior=one_hot(k), calibrated=False), steps=cfg.steps_per_axis,
            batch_size=cfg.batch_size, lr=cfg.lr, pad_id=pad, seed=cfg.seed + k, log=log,
            desc=f"sequential_sft {axis}", progress=progress,
        )
        for name, module in sequential.expert_modules.items():
            a, b = module.expert(k)
            deltas[name].append((a.detach().clone(), b.detach().clone()))
        _merge_slot_into_base(sequential, k)  # the merged weights now hold every stage so far
        losses = {a: round(response_loss(sequential, held[a], RoutingSettings(axis_prior=one_hot(k), calibrated=False), pad), 4)
                  for a in AXES if len(held[a])}
        log.write({"stage": f"sequential_sft after {axis}", "heldout_loss": losses})
        stages.append({"axis": axis, "train": result, "heldout_loss": losses})
    summary["sequential_sft"] = {
        "stages": stages,
        "forgetting": {
            stage["axis"]: round(stages[-1]["heldout_loss"][stage["axis"]] - stage["heldout_loss"][stage["axis"]], 4)
            for stage in stages[:-1] if stage["axis"] in stage["heldout_loss"]
        },
    }
    _adapter(sequential, folder / "sequential_sft",
             {n: (torch.cat([a for a, _ in d]), torch.cat([b for _, b in d], dim=1)) for n, d in deltas.items()}, 3 * r)

    _adapter(experts.mocae, folder / "uniform_merge",
             {n: (m.lora_A.detach(), m.lora_B.detach() / len(AXES)) for n, m in experts.mocae.expert_modules.items()}, 3 * r)
    if is_main_process():
        (out / "logs" / "baselines_summary.json").write_text(json.dumps(summary, indent=1))
    return summary
