"""Calibration of router outputs: a stack of switchable parts applied to router logits.

"Uncalibrated" routing is p = softmax(z). Calibrated routing starts from per-layer temperature
scaling, log p = log_softmax(z / T_ℓ) (Guo et al. 2017), then lets each further part rewrite the
log-probabilities given the router features: the natural-geometry and fractal-geometry
calibrators (see `training.calibrate`) are such parts. Every part can be switched off for
ablation without refitting, and the whole stack round-trips through one safetensors file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

import torch
from safetensors.torch import load_file, save_file
from torch.nn import functional as F


class LogProbCalibrator(Protocol):
    """A calibration part after temperature: maps log p (B,T,K) and features (B,T,D) to log p."""

    name: str
    enabled: bool

    def apply(self, layer: int, logp: torch.Tensor, features: torch.Tensor) -> torch.Tensor: ...

    def tensors(self) -> dict[str, torch.Tensor]: ...

    def settings(self) -> dict[str, object]: ...


class TemperatureScaling:
    """One temperature T_ℓ > 0 per decoder layer: log p = log_softmax(z / T_ℓ)."""

    name = "temperature"

    def __init__(self, temperatures: torch.Tensor, enabled: bool = True) -> None:
        if temperatures.ndim != 1 or not bool((temperatures > 0).all()):
            raise ValueError("temperatures must be a 1-D tensor of positive values, one per layer")
        self.temperatures = temperatures.float()
        self.enabled = enabled

    def logp(self, layer: int, logits: torch.Tensor) -> torch.Tensor:
        t = self.temperatures[layer] if self.enabled else 1.0
        return F.log_softmax(logits.float() / t, dim=-1)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"temperature.T": self.temperatures}

    def settings(self) -> dict[str, object]:
        return {"enabled": self.enabled}


PART_LOADERS: dict[str, type] = {}
"""Registry of LogProbCalibrator classes by name, filled by the modules that define them, so a
calibration file can be read back into the right classes (each has `from_tensors`)."""


class CalibrationStack:
    """Temperature scaling followed by any LogProbCalibrator parts, in order."""

    def __init__(self, temperature: TemperatureScaling, parts: list[LogProbCalibrator] | None = None) -> None:
        self.temperature = temperature
        self.parts = list(parts or [])

    @property
    def names(self) -> list[str]:
        return [self.temperature.name] + [p.name for p in self.parts]

    def enabled(self) -> dict[str, bool]:
        return {self.temperature.name: self.temperature.enabled} | {p.name: p.enabled for p in self.parts}

    def set_enabled(self, **flags: bool) -> None:
        """Switch parts on or off by name, e.g. `set_enabled(fractal=False)` for an ablation."""
        by_name = {self.temperature.name: self.temperature} | {p.name: p for p in self.parts}
        for name, flag in flags.items():
            if name not in by_name:
                raise KeyError(f"no calibration part {name!r}; parts: {', '.join(by_name)}")
            by_name[name].enabled = bool(flag)

    def probs(self, layer: int, logits: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        logp = self.temperature.logp(layer, logits)
        for part in self.parts:
            if part.enabled:
                logp = part.apply(layer, logp, features)
        return logp.exp()

    def save(self, path: str | Path) -> None:
        tensors: dict[str, torch.Tensor] = {}
        settings: dict[str, object] = {"order": self.names}
        for part in [self.temperature, *self.parts]:
            tensors.update({k: v.detach().clone().contiguous() for k, v in part.tensors().items()})
            settings[part.name] = part.settings()
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
        temperature = TemperatureScaling(tensors["temperature.T"], **settings["temperature"])
        parts = []
        for name in settings["order"][1:]:
            if name not in PART_LOADERS:
                raise ValueError(f"{path} uses calibration part {name!r}, which this version does not know")
            own = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith(name + ".")}
            parts.append(PART_LOADERS[name].from_tensors(own, settings[name]))
        return cls(temperature, parts)
