"""The two trainable pieces of MoCaE: the per-layer router and the fused three-expert linear.

Shapes in comments: B batch, T tokens, D input features, O output features, r LoRA rank, K = 3
experts.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from alignx_demo.config import AXES

K = len(AXES)


class RoutingSlot:
    """Holds the routing weights a decoder layer's router computed for the current forward.

    The router writes it in the layer's forward pre-hook, the layer's MoCaELinear modules read
    it. It is a plain object, not a module, so it is never saved or moved with the model.
    """

    __slots__ = ("weights",)

    def __init__(self) -> None:
        self.weights: torch.Tensor | None = None  # (B, T, K)


class CausalMean:
    """The causal running mean of a layer's router features over the sequence so far.

    One token cannot know what the rest of the prompt asks ("How do I…" starts helpful and harmful
    requests alike), so each token's router also sees c_t = mean_{s ≤ t, mask_s = 1} f_s, the mean of
    the (normed) features of the valid positions up to and including t. Padding positions (mask 0)
    are left out. Across KV-cache forwards the running sum and count per layer are carried in this
    object (MoCaEModel keeps one per cache), so a streamed decode gives exactly what a full
    recompute of the sequence gives.
    """

    def __init__(self, n_layers: int, mask: torch.Tensor | None = None) -> None:
        self.sums: list[torch.Tensor | None] = [None] * n_layers  # (B, D) per layer
        self.counts: list[torch.Tensor | None] = [None] * n_layers  # (B, 1) per layer
        self.mask = mask  # (B, T) of the current forward, or None: every position is valid

    def __call__(self, layer: int, features: torch.Tensor) -> torch.Tensor:
        """c (B, T, D) for this forward's features (B, T, D); updates the carried sums."""
        m = (self.mask[:, -features.shape[1]:] if self.mask is not None else features.new_ones(features.shape[:2]))
        m = m.to(features.dtype).unsqueeze(-1)  # (B, T, 1)
        sums, counts = (features * m).cumsum(dim=1), m.cumsum(dim=1)
        if self.sums[layer] is not None:
            sums = sums + self.sums[layer].unsqueeze(1)
            counts = counts + self.counts[layer].unsqueeze(1)
        self.sums[layer], self.counts[layer] = sums[:, -1].detach(), counts[:, -1].detach()
        return sums / counts.clamp_min(1.0)


class Router(nn.Module):
    """z = W · u + b ∈ R^K per token, from the decoder layer's input hidden state h.

    u = rmsnorm(h_t), and with `use_context` also the causal mean of rmsnorm(h_s) over s ≤ t
    (`CausalMean`): u = [rmsnorm(h_t); c_t] ∈ R^{2D}. Routing stays per token and per layer, in
    the one forward. Zero-initialised, so an untrained router routes uniformly. The norm has no
    parameters: its only job is to keep the logits' scale independent of the residual stream's
    norm, which grows with depth.
    """

    def __init__(self, hidden_size: int, use_norm: bool = True, use_context: bool = False) -> None:
        super().__init__()
        self.use_norm = use_norm
        self.use_context = use_context
        self.proj = nn.Linear(hidden_size * (2 if use_context else 1), K)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def features(self, hidden: torch.Tensor, context: CausalMean | None = None, layer: int = 0) -> torch.Tensor:
        """The router's input u (B, T, D or 2D), in fp32: what calibrators and feature banks see."""
        h = hidden.to(self.proj.weight.dtype)
        f = F.rms_norm(h, (h.shape[-1],), eps=1e-6) if self.use_norm else h
        if not self.use_context:
            return f
        if context is None:
            context = CausalMean(layer + 1)
        return torch.cat([f, context(layer, f)], dim=-1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.proj(features)  # (B, T, K)


def _in_out_features(base: nn.Module) -> tuple[int, int]:
    if hasattr(base, "in_features") and hasattr(base, "out_features"):
        return int(base.in_features), int(base.out_features)
    if type(base).__name__ == "Conv1D":  # GPT-2: weight is (in, out)
        d_in, d_out = base.weight.shape
        return int(d_in), int(d_out)
    raise TypeError(f"cannot inject experts into {type(base).__name__}: not a linear layer")


class MoCaELinear(nn.Module):
    """y = W0·x + s · Σ_k p_k · B_k A_k x, computed as one fused pass.

    The K LoRA experts are stored stacked: A = [A_1; A_2; A_3] ∈ R^{Kr×D} and
    B = [B_1 B_2 B_3] ∈ R^{O×Kr}. One matmul gives all K rank-r projections, each rank block is
    scaled by its routing weight, and one matmul with the stacked B maps back. The base module
    (nn.Linear, bitsandbytes Linear4bit or GPT-2's Conv1D) is kept as it is and frozen.
    """

    def __init__(self, base: nn.Module, rank: int, scaling: float, slot: RoutingSlot) -> None:
        super().__init__()
        self.base = base
        self.rank = rank
        self.scaling = scaling
        self.slot = slot
        d_in, d_out = _in_out_features(base)
        self.in_features, self.out_features = d_in, d_out
        self.lora_A = nn.Parameter(torch.empty(K * rank, d_in))
        self.lora_B = nn.Parameter(torch.zeros(d_out, K * rank))
        for k in range(K):  # PEFT's default init per expert: A Kaiming-uniform, B zero
            nn.init.kaiming_uniform_(self.lora_A[k * rank : (k + 1) * rank], a=math.sqrt(5))

    def expert(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Expert k's (A_k, B_k) views, shaped (r, D) and (O, r) as in PEFT."""
        block = slice(k * self.rank, (k + 1) * self.rank)
        return self.lora_A[block], self.lora_B[:, block]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        weights = self.slot.weights
        if weights is None:
            raise RuntimeError("MoCaELinear called outside a routed forward (no routing weights set)")
        a = F.linear(x.to(self.lora_A.dtype), self.lora_A)  # (B, T, K·r)
        scale = (weights.to(a.dtype) * self.scaling).repeat_interleave(self.rank, dim=-1)
        delta = F.linear(a * scale, self.lora_B)  # (B, T, O)
        return y + delta.to(y.dtype)
