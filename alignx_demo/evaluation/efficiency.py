"""Efficiency benchmark: decode latency, prefill throughput and memory of base vs MoCaE.

All systems are measured in one process on the same weights, interleaved round by round so
machine noise hits them alike; the result is reported as ratios. On CPU, "memory" is the bytes of
the model's parameters and buffers (batch-1 activations are negligible next to them); on CUDA it
is also `torch.cuda.max_memory_allocated` during decoding.
"""

from __future__ import annotations

import copy
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from alignx_demo.config import MoCaEConfig, RoutingSettings
from alignx_demo.modeling.mocae import MoCaEModel


@dataclass
class BenchShape:
    """A randomly initialised Llama-architecture base of realistic layer width."""

    hidden_size: int = 1024
    intermediate_size: int = 2816
    num_layers: int = 4
    num_heads: int = 16
    vocab_size: int = 32000

    def build(self, seed: int = 0) -> nn.Module:
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(seed)
        config = LlamaConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_heads,
            max_position_embeddings=1024,
        )
        return LlamaForCausalLM(config).eval()


def model_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def decode_latency(forward: Callable[..., Any], vocab: int, device: torch.device, prompt_len: int, new_tokens: int) -> tuple[float, float]:
    """(seconds per decoded token, prefill tokens per second) for one run with the KV cache."""
    ids = torch.randint(0, vocab, (1, prompt_len), device=device)
    _sync(device)
    start = time.perf_counter()
    out = forward(input_ids=ids, use_cache=True)
    _sync(device)
    prefill = time.perf_counter() - start
    cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
    start = time.perf_counter()
    for _ in range(new_tokens):
        out = forward(input_ids=token, past_key_values=cache, use_cache=True)
        cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
    _sync(device)
    return (time.perf_counter() - start) / new_tokens, prompt_len / prefill


def _routed(mocae: MoCaEModel, settings: RoutingSettings) -> Callable[..., Any]:
    def forward(**kwargs: Any) -> Any:
        with mocae.routed(settings):
            return mocae(**kwargs)

    return forward


def run_bench(
    shape: BenchShape,
    *,
    rank: int = 8,
    repeats: int = 5,
    prompt_len: int = 32,
    new_tokens: int = 32,
    device: str | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Measure base alone, MoCaE soft and MoCaE top-1 on the same random base; return a report."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    base = shape.build(seed).to(dev)
    wrapped = copy.deepcopy(base)
    mocae = MoCaEModel(wrapped, MoCaEConfig(rank=rank))
    with torch.no_grad():  # non-zero experts and routers, so no work is skipped or trivial
        for module in mocae.expert_modules.values():
            module.lora_B.normal_(std=0.01)
        for router in mocae.routers:
            router.proj.weight.normal_(std=0.1)
    systems: dict[str, Callable[..., Any]] = {
        "base": base,
        "mocae_soft": _routed(mocae, RoutingSettings(mode="soft", calibrated=False)),
        "mocae_top1": _routed(mocae, RoutingSettings(mode="top1", calibrated=False)),
    }
    for forward in systems.values():  # warm-up
        decode_latency(forward, shape.vocab_size, dev, prompt_len, 4)
    latencies: dict[str, list[float]] = {name: [] for name in systems}
    prefill: dict[str, list[float]] = {name: [] for name in systems}
    for _ in tqdm(range(repeats), desc="bench rounds", leave=False):
        for name, forward in systems.items():
            per_token, tps = decode_latency(forward, shape.vocab_size, dev, prompt_len, new_tokens)
            latencies[name].append(per_token)
            prefill[name].append(tps)
    counts = mocae.count_parameters()
    base_bytes = model_bytes(base)
    results = {
        name: {
            "decode_ms_per_token_median": 1000 * statistics.median(latencies[name]),
            "decode_ms_per_token_spread": [1000 * min(latencies[name]), 1000 * max(latencies[name])],
            "prefill_tokens_per_s_median": statistics.median(prefill[name]),
            "model_bytes": base_bytes if name == "base" else model_bytes(mocae),
        }
        for name in systems
    }
    base_ms = results["base"]["decode_ms_per_token_median"]
    return {
        "shape": shape.__dict__,
        "rank": rank,
        "device": str(dev),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "repeats": repeats,
        "prompt_len": prompt_len,
        "new_tokens": new_tokens,
        "parameters": counts,
        "systems": results,
        "ratios": {
            "mocae_soft_vs_base_latency": results["mocae_soft"]["decode_ms_per_token_median"] / base_ms,
            "mocae_top1_vs_base_latency": results["mocae_top1"]["decode_ms_per_token_median"] / base_ms,
            "mocae_params_vs_base": (counts["experts"] + counts["routers"]) / counts["base"],
            "mocae_memory_vs_base": results["mocae_soft"]["model_bytes"] / base_bytes,
        },
    }
