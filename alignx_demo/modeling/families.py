"""Which Hugging Face model families MoCaE supports, and where their parts live.

A family needs three facts: where the list of decoder layers is, which linear modules are the
MLP projections (the default expert targets), and what its output head is called (left out of
4-bit quantisation). Targets are module paths relative to a decoder layer; a target without a dot
(PEFT's short form, e.g. `down_proj`) matches any module of that leaf name. Where a target path
also ends another module's path — BERT's `output.dense` ends `attention.output.dense` — PEFT's
suffix rule would match both, so `peft_target_modules` writes the experts' PEFT config as a regex
of the exact modules.
"""

from __future__ import annotations

import re

from torch import nn

MLP_TARGETS: dict[str, list[str]] = {
    "llama": ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"],
    "mistral": ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"],
    "qwen2": ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"],
    "qwen3": ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"],
    "gemma": ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"],
    "gemma2": ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"],
    "gemma3_text": ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"],
    "phi3": ["mlp.gate_up_proj", "mlp.down_proj"],  # gate and up fused into one linear
    "gpt2": ["mlp.c_fc", "mlp.c_proj"],
    "bert": ["intermediate.dense", "output.dense"],  # BertLMHeadModel with is_decoder=True
}
LAYER_PATHS: dict[str, str] = {"gpt2": "transformer.h", "bert": "bert.encoder.layer"}
"""Where the decoder layers live, where it is not `model.layers`."""
SUFFIX_CLASHES = {"bert"}
"""Families where PEFT's suffix rule would also match modules MoCaE leaves alone."""
OUTPUT_HEADS: dict[str, str] = {"bert": "cls.predictions.decoder"}
"""The output projection's module path, where it is not `lm_head`."""
SUPPORTED_FAMILIES: tuple[str, ...] = tuple(MLP_TARGETS)


class UnsupportedModelError(ValueError):
    """Raised for a base model whose family MoCaE does not know how to inject into."""


def check_supported(model_type: str) -> None:
    if model_type not in MLP_TARGETS:
        raise UnsupportedModelError(
            f"model type {model_type!r} is not supported; supported families: "
            f"{', '.join(SUPPORTED_FAMILIES)}"
        )


def default_targets(model_type: str) -> list[str]:
    check_supported(model_type)
    return list(MLP_TARGETS[model_type])


def output_head(model_type: str) -> str:
    return OUTPUT_HEADS.get(model_type, "lm_head")


def matches_target(name: str, target: str) -> bool:
    """Whether module `name` (relative to a decoder layer) is expert target `target`."""
    return name == target or ("." not in target and name.endswith("." + target))


def peft_target_modules(model_type: str, targets: list[str]) -> list[str] | str:
    """`target_modules` for a PEFT LoraConfig that matches exactly the modules MoCaE wraps: the list
    itself, or (families whose target paths end other modules' paths) a regex PEFT full-matches."""
    if model_type not in SUFFIX_CLASHES:
        return list(targets)
    layers = re.escape(LAYER_PATHS[model_type])
    return r".*" + layers + r"\.\d+\.(" + "|".join(re.escape(t) for t in targets) + ")"


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The dotted name and the ModuleList of a causal LM's decoder layers."""
    check_supported(model.config.model_type)
    path = LAYER_PATHS.get(model.config.model_type, "model.layers")
    module: nn.Module = model
    for part in path.split("."):
        module = getattr(module, part)
    assert isinstance(module, nn.ModuleList)
    return path, module
