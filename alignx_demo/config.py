"""Typed configuration for the MoCaE model, its routing and generation.

Every field is documented because the configs are written to `mocae_config.json` and shown in
traces: a reader of an exported trace must be able to tell exactly how it was produced.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

AXES: tuple[str, str, str] = ("helpful", "harmless", "honest")
"""The three HHH axes of the bundled model, in the order of its weight vectors: the default axes of a
checkpoint (`MoCaEConfig.axes`), whose own axes a model's weight vectors follow."""

AXIS_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,23}$")
"""An axis name: it becomes a folder (`experts/<name>/`), a JSON key and a CSS class, so it is kept plain."""

MIN_AXES, MAX_AXES = 2, 6
"""How many experts a checkpoint may have: two to compare, at most six for a page to stay readable."""


def validate_axes(axes: Sequence[str]) -> tuple[str, ...]:
    """The axes as a tuple, or a one-sentence ValueError saying what is wrong with them."""
    names = tuple(axes) if isinstance(axes, (list, tuple)) else (axes,)  # a lone name is one axis, too few
    if not MIN_AXES <= len(names) <= MAX_AXES:
        raise ValueError(f"a checkpoint needs {MIN_AXES} to {MAX_AXES} axes, got {len(names)}: {', '.join(map(str, names))}")
    bad = [name for name in names if not (isinstance(name, str) and AXIS_NAME.match(name))]
    if bad:
        raise ValueError(f"axis name {bad[0]!r} is not 1-24 characters of a-z, 0-9, '_' or '-' starting with a letter")
    if len(set(names)) != len(names):
        raise ValueError(f"axis names must be distinct, got {', '.join(names)}")
    return names


def is_hhh(axes: Sequence[str]) -> bool:
    """Whether these are the bundle's HHH axes, in its order (what the HHH-only tools need)."""
    return tuple(axes) == AXES

SCHEMA_VERSION = 1
"""Version of `mocae_config.json`; bumped on any incompatible change to the checkpoint format."""


@dataclass
class MoCaEConfig:
    """Structure of the experts and routers injected into a base causal LM.

    Attributes:
        rank: LoRA rank r of each expert.
        alpha: LoRA alpha; the expert delta is scaled by s = alpha / rank (as in PEFT).
        target_modules: leaf names of the linear modules that receive experts. Empty means the
            MLP projections of the base model's family (see `modeling.families`).
        router_norm: normalise the layer input (parameter-free RMS norm) before the router's
            linear map, so router logits do not scale with the residual stream's growing norm.
        router_context: give each token's router the causal running mean of the layer's router
            features over the sequence so far as well (`modeling.layer.CausalMean`), so a token's
            routing can see what the whole prompt asks. Checkpoints written before the field
            existed read as False.
        context_scope: what that running mean covers. "sequence": every token so far, generated
            ones included (a refusal, once begun, pulls the routing of what follows toward the
            harmless expert). "prompt": the prompt's tokens only — generated tokens read the
            prompt's summary and do not join it, so a wrong first token cannot lock the run into
            the wrong expert. A forward over prompt and answer together marks the prompt with
            `MoCaEModel.prompt_span`; a KV-cache continuation is answer by definition.
        base_model_type: `config.model_type` of the base, recorded to refuse mismatched loads.
        base_model: hub id or path of the base when the checkpoint does not store it in `base/`
            (experts trained on a large real base); empty when `base/` holds it.
        axes: the experts' names, in the order of every weight vector of this model (`experts/<name>/`);
            2 to 6 distinct names (`validate_axes`). A checkpoint written before the field existed is HHH.
        schema_version: checkpoint schema version.
    """

    rank: int = 8
    alpha: float = 16.0
    target_modules: list[str] = field(default_factory=list)
    router_norm: bool = True
    router_context: bool = True
    context_scope: Literal["sequence", "prompt"] = "sequence"
    base_model_type: str = ""
    base_model: str = ""
    axes: tuple[str, ...] = AXES
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        self.axes = validate_axes(self.axes)

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    @property
    def n_experts(self) -> int:
        return len(self.axes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"axes": list(self.axes)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MoCaEConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"mocae_config.json has unknown fields {unknown}")
        cfg = cls(**({"router_context": False} | data))
        if cfg.context_scope not in ("sequence", "prompt"):
            raise ValueError(f"mocae_config.json: context_scope must be 'sequence' or 'prompt', got {cfg.context_scope!r}")
        if cfg.schema_version != SCHEMA_VERSION:
            raise ValueError(
                f"mocae_config.json has schema_version {cfg.schema_version}; "
                f"this version of alignx_demo reads {SCHEMA_VERSION}"
            )
        return cfg


RoutingMode = Literal["soft", "top1"]


@dataclass
class RoutingSettings:
    """How routing weights are produced for one call; switchable without reloading.

    Attributes:
        mode: "soft" mixes all three experts with weights p; "top1" keeps only argmax(p)
            (weight 1.0) — the recorded weights are then one-hot.
        calibrated: apply the model's calibrator (if one is loaded) to the router logits;
            False means raw softmax(z).
        axis_prior: one non-negative number per axis of the model (in its `MoCaEConfig.axes` order),
            normalised to sum 1, that replace or bias the router's weights (sliders, forcing one
            expert). None: off. The model refuses a prior of another length.
        prior_blend: with a prior, p = (1 - blend) * p_router + blend * prior; 1.0 forces the
            prior exactly, 0.0 ignores it.
    """

    mode: RoutingMode = "soft"
    calibrated: bool = True
    axis_prior: tuple[float, ...] | None = None
    prior_blend: float = 1.0

    def __post_init__(self) -> None:
        if self.mode not in ("soft", "top1"):
            raise ValueError(f"routing mode must be 'soft' or 'top1', got {self.mode!r}")
        if not (isinstance(self.prior_blend, (int, float)) and 0.0 <= self.prior_blend <= 1.0):
            raise ValueError(f"prior_blend must be a number in [0, 1], got {self.prior_blend!r}")
        if self.axis_prior is not None:
            self.axis_prior = validate_axis_prior(self.axis_prior)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def validate_axis_prior(prior: Any, axes: Sequence[str] | None = None) -> tuple[float, ...]:
    """Return the prior normalised to sum 1, or raise a ValueError that says what is wrong. With `axes`, it
    must have one number per axis; without, any count a checkpoint may have (`MIN_AXES`..`MAX_AXES`)."""
    names = ",".join(axes or AXES)
    if isinstance(prior, str):
        parts = [p.strip() for p in prior.split(",")]
        try:
            prior = [float(p) for p in parts]
        except ValueError:
            raise ValueError(f"axis prior must be numbers '{names}', got {prior!r}") from None
    try:
        values = [float(v) for v in prior]
    except (TypeError, ValueError):
        raise ValueError(f"axis prior must be a list of numbers, got {prior!r}") from None
    if axes is not None and len(values) != len(axes):
        raise ValueError(f"axis prior must have exactly {len(axes)} numbers ({', '.join(axes)}), got {len(values)}")
    if not MIN_AXES <= len(values) <= MAX_AXES:
        raise ValueError(f"axis prior must have one number per axis ({MIN_AXES} to {MAX_AXES}), got {len(values)}")
    if any(math.isnan(v) or math.isinf(v) for v in values):
        raise ValueError(f"axis prior must be finite numbers, got {values}")
    if any(v < 0 for v in values):
        raise ValueError(f"axis prior weights must be non-negative, got {values}")
    total = sum(values)
    if total <= 0:
        raise ValueError("axis prior weights must not all be zero")
    return tuple(v / total for v in values)


@dataclass
class GenerationSettings:
    """Decoding settings. Greedy unless `do_sample`; the seed makes sampling reproducible.

    Attributes:
        max_new_tokens: maximum number of generated tokens (1..2048).
        do_sample: sample from the distribution instead of taking the argmax.
        temperature: sampling temperature (> 0), used only when sampling.
        top_p: nucleus sampling mass in (0, 1], used only when sampling.
        seed: seed of the sampling generator, so two runs with the same seed draw alike.
    """

    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.max_new_tokens, int) or not 1 <= self.max_new_tokens <= 2048:
            raise ValueError(f"max_new_tokens must be an integer in [1, 2048], got {self.max_new_tokens!r}")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be a positive number, got {self.temperature!r}")
        if not (0 < self.top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


BASELINES: tuple[str, str, str] = ("joint_sft", "sequential_sft", "uniform_merge")
"""The comparison adapters of `training.baselines` (saved in `OUT/baselines/<name>/`), by name."""

PRESETS: dict[str, tuple[float, float, float] | None] = {
    "too helpful": (1.0, 0.0, 0.0),
    "too harmless": (0.0, 1.0, 0.0),
    "too honest": (0.0, 0.0, 1.0),
    "just right": None,
}
"""The trade-off presets: an axis prior (helpful, harmless, honest) that forces one expert, or None
for the calibrated router with no prior ("just right")."""


def preset_routing(name: str) -> dict[str, Any]:
    """`RoutingSettings` fields of a preset (soft, calibrated; the prior replaces the router's weights)."""
    prior = PRESETS[name]
    if prior is None:
        return {"mode": "soft", "calibrated": True}
    return {"mode": "soft", "calibrated": True, "axis_prior": prior, "prior_blend": 1.0}
