"""The router's causal context: each token also sees the running mean of the sequence so far."""

from __future__ import annotations

import pytest
import torch
from conftest import FAMILIES, VOCAB, randomize_mocae, tiny_model

from alignx_demo.config import MoCaEConfig, RoutingSettings
from alignx_demo.modeling import MoCaEModel

IDS = torch.randint(3, VOCAB, (2, 12), generator=torch.Generator().manual_seed(3))


def routed_mocae(family: str = "llama") -> MoCaEModel:
    mocae = MoCaEModel(tiny_model(family), MoCaEConfig(router_context=True))
    randomize_mocae(mocae)
    return mocae


def full_forward(mocae: MoCaEModel, ids: torch.Tensor, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad(), mocae.routed(RoutingSettings()), mocae.record() as rec:
        out = mocae(input_ids=ids, **kwargs)
    return out.logits, rec.stacked_weights()


@pytest.mark.parametrize("family", FAMILIES)
def test_streamed_routing_equals_full_recompute(family):
    """Prefill 5 tokens, then one token per cached forward: weights and logits match one full forward."""
    mocae = routed_mocae(family)
    logits, weights = full_forward(mocae, IDS[:1])
    streamed_w, streamed_logits = [], []
    with torch.no_grad(), mocae.routed(RoutingSettings()):
        cache = None
        for start, end in [(0, 5)] + [(t, t + 1) for t in range(5, IDS.shape[1])]:
            with mocae.record() as rec:
                out = mocae(input_ids=IDS[:1, start:end], past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            streamed_w.append(rec.stacked_weights())
            streamed_logits.append(out.logits)
    torch.testing.assert_close(torch.cat(streamed_w, dim=2), weights, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.cat(streamed_logits, dim=1), logits, rtol=1e-4, atol=1e-5)


def test_context_is_the_causal_mean_of_token_features():
    mocae = routed_mocae()
    with torch.no_grad(), mocae.routed(RoutingSettings()), mocae.record(features=True) as rec:
        mocae(input_ids=IDS)
    u = rec.features[0][0]  # (B, T, 2D)
    d = u.shape[-1] // 2
    expected = u[..., :d].cumsum(1) / torch.arange(1, u.shape[1] + 1).view(1, -1, 1)
    torch.testing.assert_close(u[..., d:], expected)


def test_left_padding_does_not_enter_the_context():
    """A left-padded row routes its real tokens exactly as the unpadded sequence does."""
    mocae = routed_mocae()
    _, alone = full_forward(mocae, IDS[:1, 4:])
    padded = IDS[:1].clone()
    padded[:, :4] = 0
    mask = torch.ones_like(padded)
    mask[:, :4] = 0
    _, with_pad = full_forward(mocae, padded, attention_mask=mask)
    # attention itself is masked too, so the real tokens see the same prefix either way
    torch.testing.assert_close(with_pad[:, :, 4:], alone, rtol=1e-4, atol=1e-5)


def test_context_changes_a_tokens_routing():
    """Same last token, different prefixes: with context the routing differs, without it it does not."""
    a = torch.cat([IDS[:1, :8], IDS[:1, -1:]], dim=1)
    b = torch.cat([IDS[1:, :8], IDS[:1, -1:]], dim=1)
    with_ctx = routed_mocae()
    za, zb = last_router_logits(with_ctx, a), last_router_logits(with_ctx, b)
    assert (za - zb).abs().max() > 0.1, "layer 0 routing should depend on the prefix"
    plain = MoCaEModel(tiny_model("llama"), MoCaEConfig(router_context=False))
    randomize_mocae(plain)
    torch.testing.assert_close(last_router_logits(plain, a), last_router_logits(plain, b))  # the embedding alone


def last_router_logits(mocae: MoCaEModel, ids: torch.Tensor) -> torch.Tensor:
    """Layer 0's router logits (K,) at the last token."""
    with torch.no_grad(), mocae.routed(RoutingSettings()), mocae.record() as rec:
        mocae(input_ids=ids)
    return rec.logits[0][0][0, -1]


def test_old_config_without_the_field_reads_as_no_context():
    assert MoCaEConfig.from_dict({"rank": 8}).router_context is False
    assert MoCaEConfig().router_context is True
