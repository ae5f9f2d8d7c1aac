"""The training regimes of the Axis Collapse map, emulated inside one loaded MoCaEModel.

A regime is a set of LoRA deltas plus a way of prompting and routing:

- `base`: the base model alone (every expert's B zeroed, so no delta is applied);
- `joint_sft`: the joint-SFT baseline adapter (`MODEL/baselines/joint_sft`), no preamble;
- `sequential_sft`: the sequential-SFT baseline adapter (the sum of the three merged stages), no preamble;
- `stage1_experts`: each prompt with its axis preamble (`templates.AXIS_PREAMBLES`) and its own
  Stage 1 expert forced (axis prior one-hot) — how the feature banks are built;
- `mocae`: calibrated soft routing of the three experts, no preamble — as deployed.

Baseline adapters are applied by temporarily writing their A/B matrices into the MoCaE model's
stacked expert matrices (an adapter of rank R ≤ 3r fills the first R rank rows; with a uniform
axis prior each row is scaled by s/3, so B is multiplied by 3·s_adapter/s). This equals the PEFT
adapter applied to the base, needs no second copy of the base, and works on a 4-bit base too.
The swap holds `mocae.lock`, so concurrent generations wait rather than see the swapped weights.

Features: the router input features (`Router.features`: RMS-normed layer input hidden state)
of one decoder layer (`FEATURE_LAYER`, the last by default), mean-pooled over all prompt tokens
(the preamble included where injected, as in the Stage 1 feature bank).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from alignx_demo.config import AXES, RoutingSettings
from alignx_demo.data.templates import AXIS_PREAMBLES, encode_prompt
from alignx_demo.modeling.mocae import MoCaEModel

REGIMES: tuple[str, ...] = ("base", "joint_sft", "sequential_sft", "stage1_experts", "mocae")
REGIME_LABELS: dict[str, str] = {
    "base": "Base model",
    "joint_sft": "Joint SFT",
    "sequential_sft": "Sequential SFT",
    "stage1_experts": "Stage 1 experts",
    "mocae": "MoCaE routing",
}
REGIME_SENTENCES: dict[str, str] = {
    "base": "The frozen base model with no adapter: how prompts of the three axes sit before any alignment.",
    "joint_sft": "One adapter trained on the naive mix of all three axes: the axes share one set of weights and interfere.",
    "sequential_sft": "Helpful, then harmless, then honest, each merged in turn: later stages can overwrite earlier ones.",
    "stage1_experts": "Each prompt with its axis instruction injected and its own expert: the separated axis features of Stage 1.",
    "mocae": "The three experts mixed by the calibrated router, no instruction injected: what the deployed model sees.",
}
BASELINE_REGIMES = ("joint_sft", "sequential_sft")
FEATURE_LAYER = -1
UNIFORM = (1.0 / 3, 1.0 / 3, 1.0 / 3)


def _one_hot(k: int) -> tuple[float, float, float]:
    return tuple(1.0 if j == k else 0.0 for j in range(len(AXES)))  # type: ignore[return-value]


@dataclass
class Adapter:
    """A PEFT LoRA adapter read from disk: {module name: (A (R, D), B (O, R))} and its scaling."""

    pairs: dict[str, tuple[torch.Tensor, torch.Tensor]]
    rank: int
    scaling: float

    @classmethod
    def load(cls, folder: str | Path) -> Adapter:
        folder = Path(folder)
        config = json.loads((folder / "adapter_config.json").read_text())
        tensors = load_file(str(folder / "adapter_model.safetensors"))
        pairs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for key, a in tensors.items():
            if key.endswith(".lora_A.weight"):
                name = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
                pairs[name] = (a, tensors[key.replace(".lora_A.", ".lora_B.")])
        rank = int(config["r"])
        return cls(pairs, rank, float(config["lora_alpha"]) / rank)


@dataclass
class RegimeSet:
    """What is needed to run every regime on one loaded MoCaE model; `missing` says which cannot run."""

    mocae: MoCaEModel
    tokenizer: Any
    adapters: dict[str, Adapter] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    feature_layer: int = FEATURE_LAYER
    max_len: int = 256

    @classmethod
    def from_checkpoint(cls, mocae: MoCaEModel, tokenizer: Any, model_dir: str | Path, **kwargs: Any) -> RegimeSet:
        regimes = cls(mocae, tokenizer, **kwargs)
        for name in BASELINE_REGIMES:
            folder = Path(model_dir) / "baselines" / name
            if not (folder / "adapter_config.json").exists():
                regimes.missing[name] = f"no {name} adapter in {folder.parent} (run `train baselines`)"
                continue
            try:
                adapter = Adapter.load(folder)
            except (OSError, KeyError, ValueError, json.JSONDecodeError) as err:
                regimes.missing[name] = f"{folder} could not be read: {err}"
                continue
            problem = regimes._fit_problem(adapter)
            if problem:
                regimes.missing[name] = problem
            else:
                regimes.adapters[name] = adapter
        return regimes

    @property
    def available(self) -> list[str]:
        return [r for r in REGIMES if r not in self.missing]

    def _fit_problem(self, adapter: Adapter) -> str | None:
        k_r = len(AXES) * self.mocae.config.rank
        if adapter.rank > k_r:
            return f"adapter rank {adapter.rank} exceeds the {k_r} expert rows of the model"
        unknown = set(adapter.pairs) - set(self.mocae.expert_modules)
        if unknown:
            return f"adapter targets modules the model lacks: {sorted(unknown)[:3]}"
        return None

    @contextmanager
    def applied(self, regime: str, axis: str | None = None) -> Iterator[tuple[RoutingSettings, str | None]]:
        """Swap in the regime's weights; yield (routing settings, preamble) for a prompt of `axis`."""
        if regime in self.missing:
            raise ValueError(f"regime {regime} unavailable: {self.missing[regime]}")
        if regime not in REGIMES:
            raise ValueError(f"unknown regime {regime!r}; regimes: {', '.join(REGIMES)}")
        if regime in ("stage1_experts", "mocae"):
            if regime == "mocae":
                yield RoutingSettings(mode="soft", calibrated=True), None
            else:
                k = AXES.index(axis or AXES[0])
                yield RoutingSettings(calibrated=False, axis_prior=_one_hot(k)), AXIS_PREAMBLES[AXES[k]]
            return
        saved = {n: (m.lora_A.data.clone(), m.lora_B.data.clone()) for n, m in self.mocae.expert_modules.items()}
        try:
            with torch.no_grad():
                adapter = self.adapters.get(regime)
                for name, module in self.mocae.expert_modules.items():
                    module.lora_B.data.zero_()
                    if adapter is not None and name in adapter.pairs:
                        a, b = adapter.pairs[name]
                        r = adapter.rank
                        factor = len(AXES) * adapter.scaling / module.scaling
                        module.lora_A.data[:r] = a.to(module.lora_A.dtype).to(module.lora_A.device)
                        module.lora_B.data[:, :r] = (b * factor).to(module.lora_B.dtype).to(module.lora_B.device)
            yield RoutingSettings(calibrated=False, axis_prior=UNIFORM), None
        finally:
            with torch.no_grad():
                for name, module in self.mocae.expert_modules.items():
                    module.lora_A.data.copy_(saved[name][0])
                    module.lora_B.data.copy_(saved[name][1])

    @torch.no_grad()
    def pooled(self, regime: str, prompts: list[str], axes: list[str | None]) -> tuple[torch.Tensor, torch.Tensor]:
        """Features (N, D) of `feature_layer`, mean-pooled over prompt tokens, and the routing
        weights (N, K) averaged over prompt tokens and layers, of each prompt under the regime."""
        device = next(self.mocae.model.parameters()).device
        features, weights = [], []
        with self.mocae.lock:
            for prompt, axis in zip(prompts, axes):
                with self.applied(regime, axis) as (routing, preamble):
                    ids = encode_prompt(self.tokenizer, prompt, preamble)[-self.max_len:]
                    with self.mocae.routed(routing), self.mocae.record(features=True) as record:
                        self.mocae(input_ids=torch.tensor([ids], device=device))
                features.append(record.features[self.feature_layer][0][0].float().mean(0).cpu())
                weights.append(record.stacked_weights()[:, 0].float().mean(dim=(0, 1)).cpu())
        return torch.stack(features), torch.stack(weights)
