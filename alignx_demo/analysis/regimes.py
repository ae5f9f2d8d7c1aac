"""The training regimes of the Axis Collapse map, emulated inside one loaded MoCaEModel, and the
features the map shows for each of them.

A regime is a set of LoRA deltas plus a way of prompting and routing:

- `base`: the base model alone (every expert's B zeroed, so no delta is applied), no instruction;
- `joint_sft`: the joint-SFT baseline adapter (`MODEL/baselines/joint_sft`), no instruction;
- `sequential_sft`: the sequential-SFT baseline adapter (the sum of the three merged stages), no instruction;
- `base_instructed`: the base model alone given each prompt's axis instruction
  (`templates.AXIS_PREAMBLES`) — the control: what the instruction does with no training at all;
- `stage1_experts`: each prompt with its axis instruction and its own Stage 1 expert forced (axis
  prior one-hot) — Stage 1 as trained; set beside `base_instructed`, the difference is training's;
- `stage1_uninstructed`: each prompt's own Stage 1 expert forced, no instruction;
- `mocae`: calibrated soft routing of the three experts, no instruction — as deployed. The only
  regime with a router (`ROUTED`).

Baseline adapters are applied by temporarily writing their A/B matrices into the MoCaE model's
stacked expert matrices (an adapter of rank R ≤ 3r fills the first R rank rows; with a uniform
axis prior each row is scaled by s/3, so B is multiplied by 3·s_adapter/s). This equals the PEFT
adapter applied to the base, needs no second copy of the base, and works on a 4-bit base too.
The swap holds `mocae.lock`, so concurrent generations wait rather than see the swapped weights.

Features (`Representation`): from one forward per prompt, the hidden states of every depth, each
RMS-normed without weight — depth ℓ < L is the input of decoder layer ℓ, i.e. the own-token half of
that layer's router features; depth L is the last layer's output after the model's final norm:

- `prompt_mean@ℓ`: the mean over the *user's prompt tokens only* (`prompt_span`): never the
  injected instruction, never the chat markers around the prompt. (The routers' causal-mean half is
  not a candidate: its running mean starts at token 0 and so carries the instruction's tokens.)
- `answer@ℓ`: the state at the last prompt position, where the answer starts — what the model is
  about to say.

`precompute` measures every candidate and picks one (`metrics.choose_representation`); the map and
the placement of a visitor's prompt use the one recorded in the artefact.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch.nn import functional as F

from alignx_demo.config import AXES, RoutingSettings
from alignx_demo.data.templates import AXIS_PREAMBLES, encode_prompt
from alignx_demo.modeling.mocae import MoCaEModel

REGIMES: tuple[str, ...] = (
    "base", "joint_sft", "sequential_sft", "base_instructed", "stage1_experts", "stage1_uninstructed", "mocae",
)
REGIME_LABELS: dict[str, str] = {
    "base": "Base model",
    "joint_sft": "Joint SFT",
    "sequential_sft": "Sequential SFT",
    "base_instructed": "Base + axis instruction (control)",
    "stage1_experts": "Stage 1 experts + axis instruction",
    "stage1_uninstructed": "Stage 1 experts, no instruction",
    "mocae": "MoCaE routing",
}
REGIME_SETUPS: dict[str, str] = {
    "base": "the frozen base model, no adapter, no instruction",
    "joint_sft": "one adapter trained on the naive mix of all three axes, no instruction",
    "sequential_sft": "helpful, then harmless, then honest, each stage merged in turn, no instruction",
    "base_instructed": "the base model, no adapter, each prompt given its axis instruction",
    "stage1_experts": "each prompt given its axis instruction and its own axis's expert, as in Stage 1 training",
    "stage1_uninstructed": "each prompt run through its own axis's expert, no instruction",
    "mocae": "the three experts mixed by the calibrated router, no instruction, as deployed",
}
"""What each regime runs, in words (fixed; what its picture shows is computed, see `metrics.regime_sentence`)."""
REFERENCE: dict[str, str] = {
    "base_instructed": "base",
    "joint_sft": "base",
    "sequential_sft": "base",
    "stage1_uninstructed": "base",
    "stage1_experts": "base_instructed",
    "mocae": "base",
}
"""The regime each is compared with: the one that differs from it only by what it adds (the
instruction for `base_instructed`, training for the others)."""
INSTRUCTED = ("base_instructed", "stage1_experts")
EXPERT_FORCED = ("stage1_experts", "stage1_uninstructed")
ROUTED = ("mocae",)
BASELINE_REGIMES = ("joint_sft", "sequential_sft")
UNIFORM = (1.0 / 3, 1.0 / 3, 1.0 / 3)


def _one_hot(k: int) -> tuple[float, float, float]:
    return tuple(1.0 if j == k else 0.0 for j in range(len(AXES)))  # type: ignore[return-value]


@dataclass(frozen=True)
class Representation:
    """One candidate map feature: `kind` "prompt_mean" or "answer" at hidden-state depth `depth`
    (0 … L-1: input of decoder layer `depth`; L: the last layer's output after the final norm)."""

    kind: str
    depth: int

    KINDS = ("prompt_mean", "answer")

    def __post_init__(self) -> None:
        if self.kind not in self.KINDS:
            raise ValueError(f"representation kind must be one of {self.KINDS}, got {self.kind!r}")

    @property
    def name(self) -> str:
        return f"{self.kind}@{self.depth}"

    @classmethod
    def parse(cls, name: str) -> Representation:
        kind, _, depth = name.partition("@")
        if not depth.lstrip("-").isdigit():
            raise ValueError(f"representation must look like 'prompt_mean@5' or 'answer@6', got {name!r}")
        return cls(kind, int(depth))

    def describe(self, n_layers: int) -> str:
        where = ("the last decoder layer's output (after the final norm)" if self.depth == n_layers
                 else f"the input of decoder layer {self.depth} (the own-token part of its router features)")
        if self.kind == "answer":
            return f"RMS-normed hidden state at the first answer position (what the model is about to say), {where}"
        return f"RMS-normed hidden states mean-pooled over the user's prompt tokens only (no instruction, no chat markers), {where}"


def candidates(n_layers: int) -> list[Representation]:
    """Every representation `precompute` measures: both kinds at every depth."""
    return [Representation(kind, d) for kind in Representation.KINDS for d in range(n_layers + 1)]


@functools.lru_cache(maxsize=64)
def _frame(tokenizer: Any, preamble: str | None) -> tuple[int, int]:
    """(tokens before, tokens after) the user's text in every chat prompt with this preamble: the
    common prefix and suffix of two prompts whose text differs in its only token."""
    a, b = encode_prompt(tokenizer, "a", preamble), encode_prompt(tokenizer, "b", preamble)
    head = 0
    while head < min(len(a), len(b)) and a[head] == b[head]:
        head += 1
    tail = 0
    while tail < min(len(a), len(b)) - head and a[-1 - tail] == b[-1 - tail]:
        tail += 1
    return head, tail


def prompt_span(tokenizer: Any, prompt: str, preamble: str | None, max_len: int) -> tuple[list[int], int, int]:
    """Token ids of the chat prompt (the last `max_len`) and the [start, end) of the user's own text
    in them: the instruction and the chat markers lie outside it."""
    ids = encode_prompt(tokenizer, prompt, preamble)
    head, tail = _frame(tokenizer, preamble)
    cut = max(0, len(ids) - max_len)
    start, end = max(head - cut, 0), len(ids) - tail - cut
    if end <= start:
        raise ValueError("the prompt has no tokens of its own")
    return ids[cut:], start, end


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
class RegimeFeatures:
    """Per representation name: features (N, D) of the prompts; routing weights (N, K) averaged over
    layers and the prompt's tokens after the shared chat prefix."""

    features: dict[str, torch.Tensor]
    weights: torch.Tensor


@dataclass
class RegimeSet:
    """What is needed to run every regime on one loaded MoCaE model; `missing` says which cannot run."""

    mocae: MoCaEModel
    tokenizer: Any
    adapters: dict[str, Adapter] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
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
        if regime not in REGIMES:
            raise ValueError(f"unknown regime {regime!r}; regimes: {', '.join(REGIMES)}")
        if regime in self.missing:
            raise ValueError(f"regime {regime} unavailable: {self.missing[regime]}")
        k = AXES.index(axis or AXES[0])
        preamble = AXIS_PREAMBLES[AXES[k]] if regime in INSTRUCTED else None
        if regime == "mocae":
            yield RoutingSettings(mode="soft", calibrated=True), None
            return
        if regime in EXPERT_FORCED:
            yield RoutingSettings(calibrated=False, axis_prior=_one_hot(k)), preamble
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
            yield RoutingSettings(calibrated=False, axis_prior=UNIFORM), preamble
        finally:
            with torch.no_grad():
                for name, module in self.mocae.expert_modules.items():
                    module.lora_A.data.copy_(saved[name][0])
                    module.lora_B.data.copy_(saved[name][1])

    @torch.no_grad()
    def features(self, regime: str, prompts: list[str], axes: list[str | None],
                 representations: list[Representation]) -> RegimeFeatures:
        """Each representation's features of each prompt under the regime (one forward per prompt),
        and its routing weights; `axes` picks the instruction and expert of regimes that use one."""
        device = next(self.mocae.model.parameters()).device
        out: dict[str, list[torch.Tensor | None]] = {r.name: [None] * len(prompts) for r in representations}
        weights: list[torch.Tensor | None] = [None] * len(prompts)
        with self.mocae.lock:
            for axis in dict.fromkeys(axes):  # one weight swap per axis, prompts keep their order
                with self.applied(regime, axis) as (routing, preamble):
                    for i in (i for i, a in enumerate(axes) if a == axis):
                        ids, start, end = prompt_span(self.tokenizer, prompts[i], preamble, self.max_len)
                        with self.mocae.routed(routing), self.mocae.record() as record:
                            hidden = self.mocae(input_ids=torch.tensor([ids], device=device), output_hidden_states=True).hidden_states
                        for rep in representations:
                            h = hidden[rep.depth][0].float()
                            h = F.rms_norm(h, (h.shape[-1],), eps=1e-6)
                            out[rep.name][i] = (h[start:end].mean(0) if rep.kind == "prompt_mean" else h[-1]).cpu()
                        weights[i] = record.stacked_weights()[:, 0, start:].float().mean(dim=(0, 1)).cpu()
        return RegimeFeatures({name: torch.stack(v) for name, v in out.items()}, torch.stack(weights))
