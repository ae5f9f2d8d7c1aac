"""The MoCaE checkpoint folder: saving, loading, and the clear errors a broken one gives.

Layout (schema version in `mocae_config.json`):

    CHECKPOINT/
      mocae_config.json            MoCaEConfig as JSON (its `axes` name the experts; HHH when absent)
      base/                        a Hugging Face model folder with its tokenizer (safetensors)
      experts/<axis>/              per axis (helpful, harmless, honest for the bundle), a standard PEFT
                                   LoRA adapter folder (adapter_config.json + adapter_model.safetensors),
                                   loadable by PEFT alone
      router.safetensors           the per-layer routers ("routers.ℓ.proj.weight|bias")
      calibration.safetensors      the calibration stack (optional)

Only safetensors are read: nothing is unpickled, and remote code stays off unless the operator
passes the trust-remote-code flag.

`modeling.adapters.import_adapters` writes such a folder from 2 to 6 existing PEFT LoRA adapters of one
base, named by your own axes (bring your own experts).
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from alignx_demo.config import AXES, MoCaEConfig, is_hhh
from alignx_demo.modeling.calibration import CalibrationStack
from alignx_demo.modeling.families import output_head, peft_target_modules
from alignx_demo.modeling.mocae import MoCaEModel
from alignx_demo.modeling.provenance import untrained_problem

log = logging.getLogger(__name__)

CONFIG_FILE = "mocae_config.json"
ROUTER_FILE = "router.safetensors"
CALIBRATION_FILE = "calibration.safetensors"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or corrupt; the message names the file."""


@dataclass
class LoadedModel:
    """What `load_mocae` returns: the model, its tokenizer, and how it was loaded."""

    mocae: MoCaEModel
    tokenizer: object
    path: Path
    quantized: bool
    notices: list[str]

    @property
    def description(self) -> str:
        base = self.mocae.model.config
        bits = "4-bit NF4" if self.quantized else "full precision"
        return f"{self.path.name} ({base.model_type}, {self.mocae.n_layers} layers, {bits})"


def _peft_key(module_name: str, part: str) -> str:
    return f"base_model.model.{module_name}.{part}.weight"


def save_lora_adapter(
    folder: Path,
    pairs: dict[str, tuple[torch.Tensor, torch.Tensor]],
    *,
    rank: int,
    alpha: float,
    target_modules: list[str],
    fan_in_fan_out: bool,
    model_type: str,
) -> None:
    """Write a standard PEFT LoRA adapter folder from {module name: (A (r, D), B (O, r))}; its
    `target_modules` match exactly these modules when PEFT loads the adapter alone."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, (a, b) in pairs.items():
        tensors[_peft_key(name, "lora_A")] = a.detach().float().cpu().contiguous()
        tensors[_peft_key(name, "lora_B")] = b.detach().float().cpu().contiguous()
    save_file(tensors, str(folder / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": rank,
        "lora_alpha": alpha,
        "lora_dropout": 0.0,
        "bias": "none",
        "target_modules": peft_target_modules(model_type, target_modules),
        "fan_in_fan_out": fan_in_fan_out,
        "base_model_name_or_path": None,
        "inference_mode": True,
    }
    (folder / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2))


def save_expert(mocae: MoCaEModel, k: int, folder: Path) -> None:
    """Write expert k as a standard PEFT LoRA adapter folder."""
    save_lora_adapter(
        folder,
        {name: module.expert(k) for name, module in mocae.expert_modules.items()},
        rank=mocae.config.rank,
        alpha=mocae.config.alpha,
        target_modules=mocae.config.target_modules,
        fan_in_fan_out=mocae.config.base_model_type == "gpt2",
        model_type=mocae.config.base_model_type,
    )


def _save_base(mocae: MoCaEModel, tokenizer, folder: Path) -> None:
    """Write the unwrapped base (without experts) as a Hugging Face model folder."""
    renames = {f"{name}.base.": f"{name}." for name in mocae.expert_modules}
    state = {}
    for key, value in mocae.model.state_dict().items():
        if key.endswith((".lora_A", ".lora_B")):
            continue
        module_prefix = key.rsplit(".", 1)[0] + "."
        state[renames.get(module_prefix, module_prefix) + key.rsplit(".", 1)[1]] = value
    mocae.model.save_pretrained(str(folder), state_dict=state)
    tokenizer.save_pretrained(str(folder))


def save_mocae(mocae: MoCaEModel, tokenizer, out: str | Path, base_source: str | Path | None = None) -> Path:
    """Save a full checkpoint. The base is copied from `base_source` when given (needed for a
    4-bit model, whose packed weights are not re-saved), else written from the unwrapped model;
    with `mocae.config.base_model` set, no base is stored (it is loaded from there)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base_dir = out / "base"
    if base_source is not None and not mocae.config.base_model:
        if Path(base_source).resolve() != base_dir.resolve():
            shutil.copytree(base_source, base_dir, dirs_exist_ok=True)
    elif not mocae.config.base_model:
        if getattr(mocae.model, "is_loaded_in_4bit", False):
            raise CheckpointError("a 4-bit base cannot be re-saved; pass base_source=<its folder>")
        _save_base(mocae, tokenizer, base_dir)
    for k, axis in enumerate(mocae.config.axes):
        save_expert(mocae, k, out / "experts" / axis)
    routers = {f"routers.{k}": v.detach().float().cpu().contiguous() for k, v in mocae.routers.state_dict().items()}
    save_file(routers, str(out / ROUTER_FILE), metadata={"format": "pt"})
    if mocae.calibration is not None:
        mocae.calibration.save(out / CALIBRATION_FILE)
    elif (out / CALIBRATION_FILE).exists():
        (out / CALIBRATION_FILE).unlink()
    (out / CONFIG_FILE).write_text(json.dumps(mocae.config.to_dict(), indent=2))
    return out


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise CheckpointError(f"checkpoint file missing: {path} ({what})")
    return path


def read_safetensors(path: Path, what: str) -> dict[str, torch.Tensor]:
    _require(path, what)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"checkpoint file is corrupt: {path} ({what}): {err}") from err


def read_json(path: Path, what: str) -> dict:
    _require(path, what)
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"checkpoint file is corrupt: {path} ({what}): {err}") from err
    if not isinstance(data, dict):
        raise CheckpointError(f"checkpoint file is corrupt: {path} ({what}): expected a JSON object, got {type(data).__name__}")
    return data


def read_config(path: Path) -> MoCaEConfig:
    """The `mocae_config.json` of the checkpoint folder `path`, checked (`MoCaEConfig.from_dict`)."""
    try:
        return MoCaEConfig.from_dict(read_json(path / CONFIG_FILE, "MoCaE config"))
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"checkpoint file is corrupt: {path / CONFIG_FILE} (MoCaE config): {err}") from err


def checkpoint_axes(path: str | Path) -> tuple[str, ...]:
    """The axes of the checkpoint in `path`, without loading it; the HHH axes where there is none yet (a
    checkpoint `train all` is about to write)."""
    path = Path(path)
    return read_config(path).axes if (path / CONFIG_FILE).exists() else AXES


PRETRAINED_NAMES = {"minilm": "all-MiniLM-L6-v2"}


def pretrained_name(train_summary: dict) -> str | None:
    """The pretrained model a base was warm-started from, by its public name, from its training summary
    (`base/train_summary.json`'s `config.init`); None when it was trained from scratch or the summary says nothing."""
    init = (train_summary.get("config") or {}).get("init")
    return None if init in (None, "", "scratch") else PRETRAINED_NAMES.get(init, init)


def base_init(path: str | Path) -> str | None:
    """`pretrained_name` of a checkpoint folder's base; None when its training summary is absent or unreadable."""
    try:
        return pretrained_name(json.loads((Path(path) / "base" / "train_summary.json").read_text()))
    except (OSError, ValueError):
        return None


def require_hhh(path: str | Path, tool: str) -> None:
    """Refuse, in one sentence, a checkpoint whose axes are not the HHH three, for a tool built on the HHH data."""
    axes = checkpoint_axes(path)
    if not is_hhh(axes):
        raise CheckpointError(f"{tool} measures the HHH axes on the project's HHH data, and {path} has the axes "
                              f"{', '.join(axes)}: use analyze with your labelled prompts instead")


CPU_4BIT_BLOCK_OUT, CPU_4BIT_BLOCK_IN = 32, 64
"""bitsandbytes' CPU kernels pack 4-bit weights in blocks of 32 output features, and its NF4
quantisation blocks span 64 input features."""


def quantization_config(device: str, skip: list[str] | None = None, head: str = "lm_head"):
    """NF4 with double quantisation; the output head (and `skip`) stay unquantised (routers come later)."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16 if device == "cuda" else torch.float32,
        llm_int8_skip_modules=[head, *(skip or [])],
    )


def cpu_unpackable_linears(config) -> list[str]:
    """Leaf names of linear layers whose shape bitsandbytes cannot pack on CPU (out % 32 or in % 64)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    return sorted({
        name.rsplit(".", 1)[-1]
        for name, module in skeleton.named_modules()
        if isinstance(module, torch.nn.Linear)
        and (module.out_features % CPU_4BIT_BLOCK_OUT or module.in_features % CPU_4BIT_BLOCK_IN)
        and name != output_head(config.model_type)
    })


def four_bit_kwargs(config, device: str) -> tuple[dict, list[str]]:
    """`from_pretrained` keyword arguments that load a base in NF4 on `device`, and the linears left in
    full precision because bitsandbytes' CPU kernels cannot pack their widths."""
    skip = cpu_unpackable_linears(config) if device == "cpu" else []
    return {"quantization_config": quantization_config(device, skip, output_head(config.model_type)), "device_map": device}, skip


def bitsandbytes_problem() -> str | None:
    """None when bitsandbytes can run 4-bit here, else a one-line reason."""
    try:
        import bitsandbytes  # noqa: F401
    except Exception as err:  # an import of a compiled package can fail in many ways
        return f"bitsandbytes unavailable ({type(err).__name__}: {err})"
    return None


def load_base(
    source: str | Path,
    *,
    load_in_4bit: bool = True,
    device: str | None = None,
    trust_remote_code: bool = False,
) -> tuple[torch.nn.Module, object, bool, list[str]]:
    """Load a base causal LM and its tokenizer from a local folder or hub id (safetensors only).

    Returns (model, tokenizer, quantized, notices). Where 4-bit cannot run, the model is loaded
    in full precision and a one-line notice says why.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    local = Path(source)
    if local.exists():
        _require(local / "config.json", "base model config")
        if not any(local.glob("*.safetensors")):
            raise CheckpointError(f"checkpoint file missing: {local}/model.safetensors (base weights, safetensors only)")
    notices: list[str] = []
    try:
        config = AutoConfig.from_pretrained(str(source), trust_remote_code=trust_remote_code)
    except Exception as err:  # transformers' config parsing raises many types for a malformed config.json
        raise CheckpointError(f"cannot read base model config from {source}: {error_reason(err)}") from err
    from alignx_demo.modeling.families import check_supported

    check_supported(config.model_type)
    kwargs: dict = {"use_safetensors": True, "trust_remote_code": trust_remote_code}
    quantized = False
    if load_in_4bit:
        problem = bitsandbytes_problem()
        if problem is None:
            four_bit, skip = four_bit_kwargs(config, device)
            if skip:
                notices.append(
                    f"4-bit NF4 except {', '.join(skip)}: bitsandbytes' CPU kernels need output widths divisible by "
                    f"{CPU_4BIT_BLOCK_OUT} and input widths by {CPU_4BIT_BLOCK_IN}, so those stay in full precision"
                )
            kwargs.update(four_bit)
            quantized = True
        else:
            notices.append(f"4-bit off: {problem}; loaded in full precision")
    try:
        model = AutoModelForCausalLM.from_pretrained(str(source), **kwargs)
    except (OSError, ValueError, SafetensorError) as err:
        raise CheckpointError(f"cannot load base model weights from {source}: {err}") from err
    except RuntimeError as err:
        if not quantized:
            raise CheckpointError(f"cannot load base model weights from {source}: {err}") from err
        notices.append(f"4-bit off: bitsandbytes failed ({err}); loaded in full precision")
        kwargs.pop("quantization_config")
        kwargs.pop("device_map")
        model = AutoModelForCausalLM.from_pretrained(str(source), **kwargs)
        quantized = False
    if not quantized:
        model.to(device)
    model.eval()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source), trust_remote_code=trust_remote_code)
    except Exception as err:  # the tokenizers library raises bare Exception/KeyError for a malformed tokenizer.json
        raise CheckpointError(f"cannot load the tokenizer from {source}: {error_reason(err)}") from err
    return model, tokenizer, quantized, notices


def error_reason(err: Exception) -> str:
    """The error's message, with its type where the message alone is a bare key or empty."""
    return str(err) if isinstance(err, (OSError, ValueError)) else f"{type(err).__name__}: {err}"


def load_expert_tensors(folder: Path, config: MoCaEConfig) -> dict[str, torch.Tensor]:
    """Read one PEFT adapter folder, checking that it matches the MoCaE structure."""
    adapter = read_json(folder / ADAPTER_CONFIG, f"expert {folder.name} config")
    if adapter.get("r") != config.rank or float(adapter.get("lora_alpha", -1)) != float(config.alpha):
        raise CheckpointError(
            f"{folder / ADAPTER_CONFIG}: rank/alpha {adapter.get('r')}/{adapter.get('lora_alpha')} "
            f"differ from mocae_config.json {config.rank}/{config.alpha}"
        )
    return read_safetensors(folder / ADAPTER_WEIGHTS, f"expert {folder.name} weights")


def _check_calibration_axes(calibration: CalibrationStack | None, config: MoCaEConfig, path: Path) -> None:
    """Refuse a calibration whose class means were fitted for another number of experts than the config's axes."""
    for part in calibration.parts if calibration is not None else ():
        means = getattr(part, "class_means", None)
        if means is not None and means.shape[1] != config.n_experts:
            raise CheckpointError(f"{path / CALIBRATION_FILE} was fitted for {means.shape[1]} experts, but {path / CONFIG_FILE} "
                                  f"names {config.n_experts} axes ({', '.join(config.axes)})")


def load_mocae(
    path: str | Path,
    *,
    load_in_4bit: bool = True,
    device: str | None = None,
    trust_remote_code: bool = False,
    base_model: str | Path | None = None,
    allow_untrained: bool = False,
) -> LoadedModel:
    """Load a MoCaE checkpoint folder. `base_model` loads the base from elsewhere (a hub id or
    path) instead of `path/base`, for checkpoints trained on a real base that is not copied.
    Routers that were never trained, or calibration not fitted for the routers, are refused in one
    sentence (`modeling.provenance.untrained_problem`) unless `allow_untrained` (for `train router`)."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint folder not found: {path}")
    if not allow_untrained and (problem := untrained_problem(path)):
        raise CheckpointError(problem)
    config = read_config(path)
    base_model = base_model or (None if (path / "base").exists() else config.base_model or None)
    base_source = base_model if base_model is not None else path / "base"
    if base_model is None:
        _require(path / "base", "base model folder")
    model, tokenizer, quantized, notices = load_base(
        base_source, load_in_4bit=load_in_4bit, device=device, trust_remote_code=trust_remote_code
    )
    if config.base_model_type and model.config.model_type != config.base_model_type:
        raise CheckpointError(
            f"{path / CONFIG_FILE} was trained on a {config.base_model_type} base, "
            f"but {base_source} is {model.config.model_type}"
        )
    calibration = None
    if (path / CALIBRATION_FILE).exists():
        read_safetensors(path / CALIBRATION_FILE, "calibration")
        try:
            calibration = CalibrationStack.load(path / CALIBRATION_FILE)
        except (KeyError, ValueError) as err:
            raise CheckpointError(f"checkpoint file is corrupt: {path / CALIBRATION_FILE} (calibration): {err}") from err
    _check_calibration_axes(calibration, config, path)
    mocae = MoCaEModel(model, config, calibration)
    experts = [load_expert_tensors(path / "experts" / axis, config) for axis in config.axes]
    with torch.no_grad():
        for name, module in mocae.expert_modules.items():
            for k, tensors in enumerate(experts):
                a_key, b_key = _peft_key(name, "lora_A"), _peft_key(name, "lora_B")
                if a_key not in tensors or b_key not in tensors:
                    raise CheckpointError(f"{path / 'experts' / config.axes[k] / ADAPTER_WEIGHTS} lacks weights for {name}")
                a, b = module.expert(k)
                if a.shape != tensors[a_key].shape or b.shape != tensors[b_key].shape:
                    raise CheckpointError(
                        f"{path / 'experts' / config.axes[k] / ADAPTER_WEIGHTS}: {name} has shapes "
                        f"{tuple(tensors[a_key].shape)}/{tuple(tensors[b_key].shape)}, expected {tuple(a.shape)}/{tuple(b.shape)}"
                    )
                a.copy_(tensors[a_key])
                b.copy_(tensors[b_key])
    routers = read_safetensors(path / ROUTER_FILE, "routers")
    try:
        mocae.routers.load_state_dict({k.removeprefix("routers."): v for k, v in routers.items()})
    except RuntimeError as err:
        raise CheckpointError(f"{path / ROUTER_FILE} does not fit this base: {err}") from err
    mocae.eval()
    log.info("loaded %s", path)
    return LoadedModel(mocae, tokenizer, path, quantized, notices)
