"""Which Hugging Face model families MoCaE supports, and where their parts live.

A family needs two facts: where the list of decoder layers is, and which linear modules are the
MLP projections (the default expert targets). Targets are name suffixes relative to a decoder
layer, matched like PEFT's `target_modules` (a module matches when its full name ends with
`.<target>`), so the same list works for our injector and for PEFT loading an expert alone.
"""

from __future__ import annotations

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
}
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


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The dotted name and the ModuleList of a causal LM's decoder layers."""
    check_supported(model.config.model_type)
    path = "transformer.h" if model.config.model_type == "gpt2" else "model.layers"
    module: nn.Module = model
    for part in path.split("."):
        module = getattr(module, part)
    assert isinstance(module, nn.ModuleList)
    return path, module
