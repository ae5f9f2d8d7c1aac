"""Calibration of router outputs: a stack of switchable parts applied to router logits.

"Uncalibrated" routing is p = softmax(z). Calibrated routing starts from per-layer temperature
scaling, log p = log_softmax(z / T_ℓ) (Guo et al. 2017), then lets each further part rewrite the
log-probabilities given the router features: the natural-geometry and fractal-geometry
calibrators (`modeling.geometry`) are such parts. That is the token level (the chips).

The page also shows run-level routing: the mean of a run's token weights over tokens and layers
(summaries, the compare tab, reliability diagrams). Averaging rightly-unsure early tokens with
sure late ones makes that mean underconfident even when every token is calibrated, so the stack
has a last, pooled part for it: p_run = softmax(log(mean p) / T_pool) (`PooledTemperature`).

Every part can be switched off for ablation without refitting; all are `nn.Module`s whose tensors
are buffers, so `.to(device)`, `.to(dtype)` and `model.cuda()` move them with the model, and the
whole stack round-trips through one safetensors file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F


class CalibrationPart(nn.Module):
    """A switchable part; subclasses name themselves, list their settings and tensors (buffers)."""

    name = ""

    def __init__(self, enabled: bool = True) -> None:
        super().__init__()
        self.enabled = enabled

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f"{self.name}.{k}": v for k, v in self.named_buffers()}

    def settings(self) -> dict[str, Any]:
        return {"enabled": self.enabled}

    def apply(self, layer: int, logp: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Map log p (…, K) and router features (…, D) of one layer to new log p."""
        raise NotImplementedError


class TemperatureScaling(CalibrationPart):
    """One temperature T_ℓ > 0 per decoder layer: log p = log_softmax(z / T_ℓ)."""

    name = "temperature"

    def __init__(self, temperatures: torch.Tensor, enabled: bool = True) -> None:
        super().__init__(enabled)
        if temperatures.ndim != 1 or not bool((temperatures > 0).all()):
            raise ValueError("temperatures must be a 1-D tensor of positive values, one per layer")
        self.register_buffer("T", temperatures.float().clone())

    @property
    def temperatures(self) -> torch.Tensor:
        return self.T

    def logp(self, layer: int, logits: torch.Tensor) -> torch.Tensor:
        t = self.T[layer] if self.enabled else 1.0
        return F.log_softmax(logits.to(self.T.dtype) / t, dim=-1)


class PooledTemperature(CalibrationPart):
    """Run-level calibration: p_run = softmax(log(mean p) / T_pool), from the mean of token weights."""

    name = "pooled"

    def __init__(self, temperature: torch.Tensor | float, enabled: bool = True) -> None:
        super().__init__(enabled)
        self.register_buffer("T", torch.as_tensor(temperature, dtype=torch.float32).reshape(1).clone())

    def pool(self, mean_weights: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return mean_weights
        return F.softmax(mean_weights.clamp_min(1e-12).log() / self.T.to(mean_weights.dtype), dim=-1)

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor], settings: dict[str, Any]) -> PooledTemperature:
        return cls(t["T"], **settings)


PART_LOADERS: dict[str, type] = {PooledTemperature.name: PooledTemperature}
"""Registry of CalibrationPart classes by name, filled by the modules that define them, so a
calibration file can be read back into the right classes (each has `from_tensors`)."""


class CalibrationStack(nn.Module):
    """Temperature scaling, then token-level parts in order, and optionally the pooled run-level part."""

    def __init__(self, temperature: TemperatureScaling, parts: list[CalibrationPart] | None = None,
                 pooled: PooledTemperature | None = None) -> None:
        super().__init__()
        self.temperature = temperature
        self.parts = nn.ModuleList(parts or [])
        self.pooled = pooled

    def _all(self) -> list[CalibrationPart]:
        return [self.temperature, *self.parts] + ([self.pooled] if self.pooled is not None else [])

    @property
    def names(self) -> list[str]:
        return [p.name for p in self._all()]

    def enabled(self) -> dict[str, bool]:
        return {p.name: p.enabled for p in self._all()}

    def set_enabled(self, **flags: bool) -> None:
        """Switch parts on or off by name, e.g. `set_enabled(fractal=False)` for an ablation."""
        by_name = {p.name: p for p in self._all()}
        for name, flag in flags.items():
            if name not in by_name:
                raise KeyError(f"no calibration part {name!r}; parts: {', '.join(by_name)}")
            by_name[name].enabled = bool(flag)

    def probs(self, layer: int, logits: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Calibrated token-level weights (…, K) of one layer."""
        logp = self.temperature.logp(layer, logits)
        for part in self.parts:
            if part.enabled:
                logp = part.apply(layer, logp, features)
        return logp.exp()

    def pool(self, mean_weights: torch.Tensor) -> torch.Tensor:
        """Run-level weights from the mean (…, K) of a run's calibrated token weights."""
        return self.pooled.pool(mean_weights) if self.pooled is not None else mean_weights

    def save(self, path: str | Path) -> None:
        """One safetensors file; a tensor equal to one saved earlier (the PCA both geometric parts
        share) is stored once and referenced in the metadata."""
        tensors: dict[str, torch.Tensor] = {}
        shared: dict[str, str] = {}
        settings: dict[str, object] = {"order": self.names}
        for part in self._all():
            for key, value in part.tensors().items():
                value = value.detach().float().cpu().contiguous()
                same = next((k for k, v in tensors.items() if v.shape == value.shape and torch.equal(v, value)), None)
                if same is not None and value.numel() > 1:
                    shared[key] = same
                else:
                    tensors[key] = value.clone()
            settings[part.name] = part.settings()
        settings["shared"] = shared
        save_file(tensors, str(path), metadata={"alignx_calibration": json.dumps(settings)})

    @classmethod
    def load(cls, path: str | Path) -> CalibrationStack:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        if "alignx_calibration" not in metadata:
            raise ValueError(f"{path} has no alignx_calibration metadata")
        settings = json.loads(metadata["alignx_calibration"])
        tensors = load_file(str(path))
        tensors.update({k: tensors[v] for k, v in settings.get("shared", {}).items()})
        temperature = TemperatureScaling(tensors["temperature.T"], **settings["temperature"])
        parts, pooled = [], None
        for name in settings["order"][1:]:
            if name not in PART_LOADERS:
                raise ValueError(f"{path} uses calibration part {name!r}, which this version does not know")
            own = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith(name + ".")}
            part = PART_LOADERS[name].from_tensors(own, settings[name])
            if isinstance(part, PooledTemperature):
                pooled = part
            else:
                parts.append(part)
        return cls(temperature, parts, pooled)
