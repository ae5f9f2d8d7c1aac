"""MoCaEModel: a Hugging Face causal LM with K LoRA experts (the config's axes) and a router per decoder layer.

Injection follows PEFT's tuners: every target linear inside a decoder layer is swapped for a
`MoCaELinear`, and a forward pre-hook on each decoder layer runs that layer's router on the
layer's input hidden state, turns the logits into weights p (calibrated or not, soft or top-1,
optionally replaced or biased by an axis prior) and hands them to the layer's experts. One forward
of the base model thus routes every token at every layer — no second pass.

Placement: each router is built on its decoder layer's device and each expert beside the linear it
wraps (`modeling.layer`), so a base spread over devices by `device_map="auto"` routes without
moving tensors inside a layer; the calibration stack sits on the input embedding's device, and a
layer elsewhere hands it its logits and features (a few hundred bytes per token).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn import functional as F

from alignx_demo.config import MoCaEConfig, RoutingSettings
from alignx_demo.modeling.calibration import CalibrationStack
from alignx_demo.modeling.families import decoder_layers, default_targets, matches_target
from alignx_demo.modeling.layer import CausalMean, MoCaELinear, Router, RoutingSlot, module_device

_CONTEXT_ATTR = "alignx_router_context"
"""Attribute of a KV cache that carries the routers' running means (`CausalMean`) to its next forward."""


class RoutingRecord:
    """What the routers produced during the forwards run inside `MoCaEModel.record()`.

    `weights[ℓ]` and `logits[ℓ]` hold one (B, T, K) tensor per forward for layer ℓ; `features[ℓ]`
    holds the router features (B, T, D) when asked for. Tensors are detached unless recording for
    training.
    """

    def __init__(self, n_layers: int, features: bool, detach: bool) -> None:
        self.want_features = features
        self.detach = detach
        self.weights: list[list[torch.Tensor]] = [[] for _ in range(n_layers)]
        self.logits: list[list[torch.Tensor]] = [[] for _ in range(n_layers)]
        self.features: list[list[torch.Tensor]] = [[] for _ in range(n_layers)]

    def add(self, layer: int, logits: torch.Tensor, weights: torch.Tensor, features: torch.Tensor) -> None:
        keep = (lambda t: t.detach()) if self.detach else (lambda t: t)
        self.logits[layer].append(keep(logits))
        self.weights[layer].append(keep(weights))
        if self.want_features:
            self.features[layer].append(keep(features))

    def stacked_weights(self, forward: int = -1) -> torch.Tensor:
        """Weights of one recorded forward as (L, B, T, K), on the first layer's device."""
        layers = [w[forward] for w in self.weights]
        device = layers[0].device
        return torch.stack([w if w.device == device else w.to(device) for w in layers])


RoutingTransform = Callable[[int, torch.Tensor], torch.Tensor]
"""(layer index, routing weights (B, T, K)) → the weights that layer's experts use instead."""

_PRIOR_CACHE_SIZE = 32
"""Axis-prior tensors kept per (prior, device, dtype), so a forward creates none."""


class MoCaEModel(nn.Module):
    """A frozen base causal LM + one LoRA expert per axis (`config.axes`) + one router per decoder layer.

    `routing` (a RoutingSettings) is read on every forward, so modes switch per call without
    reloading. `lock` serialises users of the shared model (routing settings and recording are
    per-call state held on the model while it runs). `expert_dtype` overrides the experts' dtype
    (default: the base's compute dtype, fp32 on the CPU — see `modeling.layer.expert_dtype`), e.g.
    fp32 experts for training on a bf16 base.
    """

    def __init__(
        self,
        model: nn.Module,
        config: MoCaEConfig | None = None,
        calibration: CalibrationStack | None = None,
        expert_dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        config = config or MoCaEConfig()
        if not config.target_modules:
            config.target_modules = default_targets(model.config.model_type)
        config.base_model_type = model.config.model_type
        self.model = model
        self.config = config
        self.calibration = calibration
        self.routing = RoutingSettings()
        self.lock = threading.RLock()
        self._record: RoutingRecord | None = None
        self._transforms: tuple[RoutingTransform, ...] = ()
        self._prompt_mask: torch.Tensor | None = None
        self._bypass = False
        self._priors: dict[tuple, torch.Tensor] = {}
        for p in model.parameters():
            p.requires_grad_(False)
        self.layers_path, layers = decoder_layers(model)
        self.slots = [RoutingSlot(config.n_experts) for _ in layers]
        hidden = model.config.hidden_size
        self.routers = nn.ModuleList()
        for layer in layers:  # each router beside its layer
            with torch.device(module_device(layer)):
                self.routers.append(Router(hidden, config.n_experts, config.router_norm, config.router_context))
        self._context: CausalMean | None = None
        model.register_forward_pre_hook(self._start_forward, with_kwargs=True)
        model.register_forward_hook(self._end_forward, with_kwargs=True)
        self.expert_modules: dict[str, MoCaELinear] = {}
        self._sites: dict[str, tuple[nn.Module, str]] = {}
        for index, layer in enumerate(layers):
            self._inject(f"{self.layers_path}.{index}", layer, self.slots[index], expert_dtype)
            layer.register_forward_pre_hook(self._make_hook(index), with_kwargs=True)
        if not self.expert_modules:
            raise ValueError(f"no module matched target_modules {config.target_modules}")
        if calibration is not None:
            calibration.to(module_device(model))

    def _inject(self, prefix: str, layer: nn.Module, slot: RoutingSlot, dtype: torch.dtype | None) -> None:
        for name, module in list(layer.named_modules()):
            if not any(matches_target(name, t) for t in self.config.target_modules):
                continue
            parent_name, _, leaf = name.rpartition(".")
            parent = layer.get_submodule(parent_name) if parent_name else layer
            wrapped = MoCaELinear(module, self.config.rank, self.config.scaling, slot, dtype)
            setattr(parent, leaf, wrapped)
            self.expert_modules[f"{prefix}.{name}"] = wrapped
            self._sites[f"{prefix}.{name}"] = (parent, leaf)

    def _start_forward(self, _module: nn.Module, args: tuple, kwargs: dict) -> None:
        """Pick up the running means a KV cache carries (a continued sequence) or start fresh ones."""
        if self._bypass:
            return
        cache = kwargs.get("past_key_values")
        continued = cache is not None and hasattr(cache, "get_seq_length") and cache.get_seq_length() > 0
        mask = kwargs.get("attention_mask")
        mask = mask if isinstance(mask, torch.Tensor) and mask.ndim == 2 else None
        context = getattr(cache, _CONTEXT_ATTR, None) if continued else None
        self._context = context or CausalMean(self.n_layers)
        self._context.mask = self._summary_mask(mask, continued, kwargs.get("input_ids", args[0] if args else None))

    def _summary_mask(self, mask: torch.Tensor | None, continued: bool, input_ids: torch.Tensor | None) -> torch.Tensor | None:
        """Which positions of this forward join the routers' running mean (None: all valid ones)."""
        if self.config.context_scope != "prompt":
            return mask
        if continued and isinstance(input_ids, torch.Tensor):  # a cached continuation is answer: it reads the summary only
            return torch.zeros(input_ids.shape[:2], dtype=torch.long, device=input_ids.device)
        if self._prompt_mask is None:
            return mask
        span = self._prompt_mask.to(mask.device) if mask is not None else self._prompt_mask
        return span if mask is None else mask * span

    def _end_forward(self, _module: nn.Module, args: tuple, kwargs: dict, output) -> None:
        cache = getattr(output, "past_key_values", None)
        if cache is not None and self._context is not None:
            self._context.mask = None
            setattr(cache, _CONTEXT_ATTR, self._context)
        self._context = None

    def _make_hook(self, index: int):
        def hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
            if self._bypass:
                return
            hidden = args[0] if args else kwargs["hidden_states"]
            self.slots[index].weights = self._route(index, hidden)

        return hook

    def _route(self, index: int, hidden: torch.Tensor) -> torch.Tensor:
        """Routing weights (B, T, K) of layer `index` for its input hidden states, on the router's device."""
        router = self.routers[index]
        features = router.features(hidden, self._context, index)
        logits = router(features)
        settings = self.routing
        prior = settings.axis_prior
        if prior is not None and settings.prior_blend == 1.0:  # the prior replaces routing
            weights = self._prior_tensor(prior, logits).expand_as(logits)
        else:
            if settings.calibrated and self.calibration is not None:
                weights = self._calibrated(index, logits, features)
            else:
                weights = F.softmax(logits if logits.dtype == torch.float32 else logits.float(), dim=-1)
            if prior is not None:  # (1 − blend)·p + blend·prior
                weights = torch.lerp(weights, self._prior_tensor(prior, weights), settings.prior_blend)
        if settings.mode == "top1":
            weights = torch.zeros_like(weights).scatter_(-1, weights.argmax(dim=-1, keepdim=True), 1.0)
        if self._record is not None:
            self._record.add(index, logits, weights, features)
        for transform in self._transforms:
            weights = transform(index, weights)
        return weights

    def _calibrated(self, index: int, logits: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """The calibration stack's weights, computed on the stack's device and returned on the layer's."""
        calibration = self.calibration
        device = calibration.temperature.T.device
        if device == logits.device:
            return calibration.probs(index, logits, features)
        return calibration.probs(index, logits.to(device), features.to(device)).to(logits.device)

    def _prior_tensor(self, prior: tuple[float, ...], like: torch.Tensor) -> torch.Tensor:
        key = (prior, like.device, like.dtype)
        tensor = self._priors.get(key)
        if tensor is None:
            if len(self._priors) >= _PRIOR_CACHE_SIZE:
                self._priors.clear()
            if len(prior) != self.config.n_experts:
                raise ValueError(f"axis prior has {len(prior)} numbers, but this model has {self.config.n_experts} axes "
                                 f"({', '.join(self.config.axes)})")
            tensor = self._priors[key] = torch.tensor(prior, dtype=like.dtype, device=like.device)
        return tensor

    @property
    def n_layers(self) -> int:
        return len(self.routers)

    @property
    def axes(self) -> tuple[str, ...]:
        """The experts' names, in the order of every weight vector this model produces."""
        return self.config.axes

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def generate(self, *args, **kwargs):
        return self.model.generate(*args, **kwargs)

    @contextmanager
    def routed(self, settings: RoutingSettings) -> Iterator[None]:
        """Run the enclosed forwards with these routing settings, restoring the previous ones."""
        previous, self.routing = self.routing, settings
        try:
            yield
        finally:
            self.routing = previous

    @contextmanager
    def transformed(self, transform: RoutingTransform) -> Iterator[None]:
        """Run the enclosed forwards with `transform(layer, weights)` applied to each layer's routing weights
        (B, T, K) after the model's own routing (calibration, prior, top-1), e.g. to remove or force an
        expert per batch row. `record()` keeps the model's own weights. Holds the lock; nested transforms
        apply outermost first."""
        with self.lock:
            previous = self._transforms
            self._transforms = (*previous, transform)
            try:
                yield
            finally:
                self._transforms = previous

    @contextmanager
    def prompt_span(self, mask: torch.Tensor) -> Iterator[None]:
        """Mark the prompt's positions (B, T; 1 = prompt) of the enclosed fresh forwards over prompt and
        answer together, so that with `context_scope="prompt"` they route exactly as a streamed run
        (prefill, then cached steps) does. Without that scope it changes nothing."""
        previous, self._prompt_mask = self._prompt_mask, mask
        try:
            yield
        finally:
            self._prompt_mask = previous

    @contextmanager
    def base_only(self) -> Iterator[None]:
        """Run the enclosed forwards through the bare base: every expert unwrapped back to its base
        linear and the routers off, so the base alone can be timed or compared on the same weights."""
        with self.lock:
            for name, module in self.expert_modules.items():
                parent, leaf = self._sites[name]
                setattr(parent, leaf, module.base)
            self._bypass = True
            try:
                yield
            finally:
                self._bypass = False
                for name, module in self.expert_modules.items():
                    parent, leaf = self._sites[name]
                    setattr(parent, leaf, module)

    @contextmanager
    def record(self, features: bool = False, detach: bool = True) -> Iterator[RoutingRecord]:
        """Record router logits, weights (and optionally features) of the enclosed forwards."""
        record = RoutingRecord(self.n_layers, features, detach)
        self._record = record
        try:
            yield record
        finally:
            self._record = None

    def expert_parameters(self) -> list[nn.Parameter]:
        return [p for m in self.expert_modules.values() for p in (m.lora_A, m.lora_B)]

    def count_parameters(self) -> dict[str, int]:
        """Parameters of the base, the experts and the routers (4-bit weights counted as elements)."""
        added = {id(p) for p in self.expert_parameters()} | {id(p) for p in self.routers.parameters()}
        base = 0
        for p in self.model.parameters():
            if id(p) in added:
                continue
            n = p.numel()
            if getattr(p, "quant_state", None) is not None:  # packed 4-bit: two weights per byte
                n = int(torch.Size(p.quant_state.shape).numel())
            base += n
        return {
            "base": base,
            "experts": sum(p.numel() for p in self.expert_parameters()),
            "routers": sum(p.numel() for p in self.routers.parameters()),
        }
