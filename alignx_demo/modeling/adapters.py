"""Bring your own experts: 2 to 6 PEFT LoRA adapters of one base, named by your axes, become a MoCaE checkpoint.

`import_adapters` writes the checkpoint folder of `modeling.checkpoint` from existing PEFT LoRA adapters of
one base, one per axis, the axes named by you (`MoCaEConfig.axes`, in the order given; the HHH three in any
order are stored in the bundle's order, so HHH tools keep working): the base is not copied, ranks may differ
(zero padding to the largest), and adapters that cannot be mixed are refused with a one-sentence `AdapterError`.

Steps, in the order their errors can show: the axes are named validly; each adapter folder is read as a
plain low-rank delta (`read_lora_adapter`); the adapters agree on their base; every adapted module is a
decoder-layer linear of the base with the adapter's shapes, and all adapt the same modules; then
the experts are written at one rank and one scaling, with zero routers and no calibration.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from alignx_demo.config import AXES, MoCaEConfig, validate_axes
from alignx_demo.modeling.checkpoint import (
    ADAPTER_CONFIG, ADAPTER_WEIGHTS, CALIBRATION_FILE, CONFIG_FILE, ROUTER_FILE, CheckpointError, error_reason, read_json,
    read_safetensors, save_lora_adapter,
)
from alignx_demo.modeling.families import check_supported, decoder_layers
from alignx_demo.modeling.mocae import MoCaEModel

IMPORT_SUMMARY = Path("logs") / "imported_experts.json"


class AdapterError(CheckpointError):
    """PEFT LoRA adapters that cannot become one MoCaE; the message says why in one sentence."""


_UNMIXABLE = {
    "use_dora": "uses DoRA (a magnitude vector per module)",
    "lora_bias": "trains a bias on B (lora_bias)",
    "modules_to_save": "saves whole modules (modules_to_save)",
    "layer_replication": "replicates layers (layer_replication)",
    "trainable_token_indices": "trains token embeddings (trainable_token_indices)",
    "target_parameters": "adapts parameters rather than modules (target_parameters)",
    "use_qalora": "is a QA-LoRA adapter",
    "alora_invocation_tokens": "is an activated LoRA (alora_invocation_tokens)",
}
"""PEFT LoRA options whose effect is more than a low-rank delta B·A on a linear: MoCaE cannot mix them."""


@dataclass
class LoraAdapter:
    """One PEFT LoRA adapter folder as MoCaE reads it: per module (A (r, D), B (O, r), scaling)."""

    folder: Path
    base: str
    modules: dict[str, tuple[torch.Tensor, torch.Tensor, float]]


# reading one adapter ----------------------------------------------------------------------------------------

def _pattern_value(patterns: dict | None, name: str, default: Any) -> Any:
    """PEFT's rank_pattern/alpha_pattern lookup: the first key matching the end of the module name."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", name):
            return value
    return default


def _check_plain_lora(folder: Path, config: dict) -> None:
    """Refuse an adapter config whose effect is more than B·A on a linear (another method, DoRA, biases, …)."""
    if str(config.get("peft_type", "")).upper() != "LORA":
        raise AdapterError(f"{folder} is a {config.get('peft_type')!r} adapter; MoCaE mixes PEFT LoRA adapters only")
    for key, what in _UNMIXABLE.items():
        if config.get(key):
            raise AdapterError(f"{folder} {what}, which MoCaE cannot mix: it needs plain LoRA adapters")
    if config.get("bias", "none") != "none":
        raise AdapterError(f"{folder} trains biases (bias={config['bias']!r}), which MoCaE cannot mix: it needs bias='none'")


def _lora_pairs(folder: Path, tensors: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """{module name: {"lora_A": A, "lora_B": B}} from PEFT's saved keys; any other weight is refused."""
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        stem = key.removeprefix("base_model.model.").replace(".default.", ".")
        for part in ("lora_A", "lora_B"):
            if stem.endswith(f".{part}.weight"):
                pairs.setdefault(stem.removesuffix(f".{part}.weight"), {})[part] = value
                break
        else:
            raise AdapterError(f"{folder / ADAPTER_WEIGHTS} holds {key}, which is not a LoRA A or B weight MoCaE can mix")
    return pairs


def read_lora_adapter(folder: str | Path) -> LoraAdapter:
    """Read a PEFT LoRA adapter folder, refusing anything that is not a plain low-rank delta."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AdapterError(f"adapter folder not found: {folder}")
    config = read_json(folder / ADAPTER_CONFIG, "PEFT adapter config")
    _check_plain_lora(folder, config)
    pairs = _lora_pairs(folder, read_safetensors(folder / ADAPTER_WEIGHTS, "PEFT adapter weights"))
    modules = {}
    for name, pair in pairs.items():
        if set(pair) != {"lora_A", "lora_B"} or pair["lora_A"].shape[0] != pair["lora_B"].shape[1]:
            raise AdapterError(f"{folder / ADAPTER_WEIGHTS}: {name} lacks a matching lora_A/lora_B pair")
        r = int(pair["lora_A"].shape[0])
        alpha = float(_pattern_value(config.get("alpha_pattern"), name, config.get("lora_alpha", r)))
        scaling = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
        modules[name] = (pair["lora_A"].float(), pair["lora_B"].float(), scaling)
    if not modules:
        raise AdapterError(f"{folder / ADAPTER_WEIGHTS} holds no LoRA weights")
    return LoraAdapter(folder, str(config.get("base_model_name_or_path") or ""), modules)


# checking the adapters against each other and the base -----------------------------------------------------

def adapter_axes(adapters: dict[str, Any]) -> tuple[str, ...]:
    """The checkpoint's axes: the adapters' names in the order given, the HHH three in the bundle's order."""
    if set(adapters) == set(AXES):
        return AXES
    try:
        return validate_axes(list(adapters))
    except ValueError as err:
        raise AdapterError(str(err)) from None


def _recorded_bases(read: dict[str, LoraAdapter]) -> dict[str, str]:
    """{axis: the base its adapter records}, refusing adapters that record different bases."""
    recorded = {axis: a.base for axis, a in read.items() if a.base}
    if len(set(recorded.values())) > 1:
        raise AdapterError("the adapters were trained on different bases: "
                           + ", ".join(f"{axis} on {base}" for axis, base in recorded.items()))
    return recorded


def _base_skeleton(base_model: str | Path, trust_remote_code: bool) -> tuple[str, Any, nn.Module]:
    """(source, config, skeleton): the base as the checkpoint records it, its config, and the model on the
    meta device — names and shapes only, nothing of the base is loaded."""
    from transformers import AutoConfig, AutoModelForCausalLM

    source = str(Path(base_model).resolve()) if Path(base_model).exists() else str(base_model)
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except Exception as err:  # transformers raises many types for a missing or malformed config
        raise CheckpointError(f"cannot read base model config from {base_model}: {error_reason(err)}") from err
    check_supported(config.model_type)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    return source, config, skeleton


def _layer_targets(adapter: LoraAdapter, skeleton: nn.Module, base_model: str | Path) -> list[str]:
    """The target names (relative to a decoder layer) an adapter adapts, each checked against the base's module."""
    from alignx_demo.modeling.layer import _in_out_features

    layers_path, _ = decoder_layers(skeleton)
    linears = dict(skeleton.named_modules())
    suffixes: list[str] = []
    for name, (a, b, _) in adapter.modules.items():
        if name not in linears:
            raise AdapterError(f"{adapter.folder} adapts {name}, which {base_model} does not have: "
                               "the adapter was made for a different base")
        try:
            d_in, d_out = _in_out_features(linears[name])
        except TypeError:
            raise AdapterError(f"{adapter.folder} adapts {name}, which is not a linear layer of {base_model}") from None
        if (a.shape[1], b.shape[0]) != (d_in, d_out):
            raise AdapterError(f"{adapter.folder}: {name} maps {a.shape[1]}→{b.shape[0]} in the adapter but "
                               f"{d_in}→{d_out} in {base_model}: the adapter was made for a different base")
        head, _, rest = name.removeprefix(layers_path + ".").partition(".")
        if not name.startswith(layers_path + ".") or not head.isdigit():
            raise AdapterError(f"{adapter.folder} adapts {name}, outside the decoder layers ({layers_path}); "
                               "MoCaE routes within each decoder layer")
        if rest not in suffixes:
            suffixes.append(rest)
    return suffixes


def _common_targets(read: dict[str, LoraAdapter], skeleton: nn.Module, base_model: str | Path) -> list[str]:
    """The target modules all the adapters share (refused when they differ)."""
    targets = {axis: _layer_targets(adapter, skeleton, base_model) for axis, adapter in read.items()}
    if len({frozenset(t) for t in targets.values()}) > 1:
        raise AdapterError("the adapters target different modules ("
                           + "; ".join(f"{axis}: {', '.join(sorted(t))}" for axis, t in targets.items())
                           + "): MoCaE needs the same target modules in all of them")
    return next(iter(targets.values()))


# writing the checkpoint ----------------------------------------------------------------------------------------

def _padded_pairs(mocae: MoCaEModel, adapter: LoraAdapter, rank: int, scaling: float) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """An adapter's (A, B) per expert module at the checkpoint's rank and scaling: A padded with zero rows,
    B with zero columns (B·A unchanged), B rescaled by its own scaling over the checkpoint's; a module
    the adapter leaves out gets a zero expert."""
    pairs = {}
    for name, module in mocae.expert_modules.items():
        a_pad, b_pad = torch.zeros(rank, module.in_features), torch.zeros(module.out_features, rank)
        if name in adapter.modules:
            a, b, own = adapter.modules[name]
            a_pad[: a.shape[0]] = a
            b_pad[:, : b.shape[1]] = b * (own / scaling)
        pairs[name] = (a_pad, b_pad)
    return pairs


def _write_checkpoint(out: Path, mocae: MoCaEModel, read: dict[str, LoraAdapter], scaling: float, fan_in_fan_out: bool) -> None:
    """Experts at one `scaling`, zero routers (uniform routing) and the config; a calibration fitted for
    other experts goes."""
    config = mocae.config
    out.mkdir(parents=True, exist_ok=True)
    for axis in config.axes:
        save_lora_adapter(out / "experts" / axis, _padded_pairs(mocae, read[axis], config.rank, scaling),
                          rank=config.rank, alpha=config.alpha, target_modules=config.target_modules,
                          fan_in_fan_out=fan_in_fan_out, model_type=config.base_model_type)
    routers = {f"routers.{key}": torch.zeros(value.shape) for key, value in mocae.routers.state_dict().items()}
    save_file(routers, str(out / ROUTER_FILE), metadata={"format": "pt"})
    (out / CALIBRATION_FILE).unlink(missing_ok=True)
    (out / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2))


def _summary(source: str, base_model: str | Path, config: MoCaEConfig, adapters: dict[str, str | Path],
             read: dict[str, LoraAdapter], recorded: dict[str, str]) -> dict[str, Any]:
    """What was imported: base, rank, alpha, targets, each expert's ranks and scalings, and notices."""
    return {
        "base_model": source,
        "rank": config.rank,
        "alpha": config.alpha,
        "target_modules": config.target_modules,
        "experts": {axis: {"folder": str(Path(adapters[axis]).resolve()), "recorded_base": read[axis].base or None,
                           "ranks": sorted({int(a.shape[0]) for a, _, _ in read[axis].modules.values()}),
                           "scalings": sorted({s for _, _, s in read[axis].modules.values()}),
                           "modules": len(read[axis].modules)} for axis in config.axes},
        "notices": [f"the adapters record base {b!r}, not {base_model!r}; their module names and shapes fit it"
                    for b in sorted(set(recorded.values())) if b not in (str(base_model), source)],
    }


def import_adapters(
    out: str | Path, base_model: str | Path, adapters: dict[str, str | Path], *, trust_remote_code: bool = False
) -> dict[str, Any]:
    """Write a MoCaE checkpoint in `out` whose experts are existing PEFT LoRA adapters of `base_model`, one per
    axis: `adapters` maps 2 to 6 axis names (`config.validate_axes`) to adapter folders, its order the axes' order.

    The base is not copied (`mocae_config.json` records `base_model`); the routers start at zero
    (uniform routing) for `train router`, and there is no calibration until `train calibrate`.
    Adapters may have different ranks and alphas: every expert is stored at the largest rank R,
    a smaller adapter's A padded with zero rows and its B with zero columns — the padded ranks add
    B·A = 0, so each expert's delta is exactly its adapter's — and each module's B is multiplied by
    its own scaling over the checkpoint's (alpha / r, or alpha / √r with rsLoRA), so one scaling
    serves all. A module an adapter leaves out (e.g. `layers_to_transform`) gets a zero expert.
    Returns a summary (also written to `out/logs/imported_experts.json`).
    """
    axes = adapter_axes(adapters)
    out = Path(out)
    if (out / "base").exists():
        raise AdapterError(f"{out / 'base'} exists, but a checkpoint of your own experts loads its base from "
                           f"{base_model}: use an empty --out")
    read = {axis: read_lora_adapter(adapters[axis]) for axis in axes}
    recorded = _recorded_bases(read)
    source, base_config, skeleton = _base_skeleton(base_model, trust_remote_code)
    targets = _common_targets(read, skeleton, base_model)
    rank = max(a.shape[0] for adapter in read.values() for a, _, _ in adapter.modules.values())
    scaling = next(iter(read[axes[0]].modules.values()))[2]
    config = MoCaEConfig(rank=rank, alpha=scaling * rank, target_modules=targets, router_context=True, base_model=source,
                         axes=axes)
    mocae = MoCaEModel(skeleton, config)  # on the meta device: the expert names and the router shapes
    _write_checkpoint(out, mocae, read, scaling, fan_in_fan_out=base_config.model_type == "gpt2")
    summary = _summary(source, base_model, config, adapters, read, recorded)
    (out / IMPORT_SUMMARY).parent.mkdir(exist_ok=True)
    (out / IMPORT_SUMMARY).write_text(json.dumps(summary, indent=1))
    return summary
