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


def streamed(mocae: MoCaEModel, ids: torch.Tensor, prefill: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prefill `prefill` tokens, then one token per cached forward: (weights (L, B, T, K), logits)."""
    weights, logits = [], []
    with torch.no_grad(), mocae.routed(RoutingSettings()):
        cache = None
        for start, end in [(0, prefill)] + [(t, t + 1) for t in range(prefill, ids.shape[1])]:
            with mocae.record() as rec:
                out = mocae(input_ids=ids[:, start:end], past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            weights.append(rec.stacked_weights())
            logits.append(out.logits)
    return torch.cat(weights, dim=2), torch.cat(logits, dim=1)


@pytest.mark.parametrize("family", FAMILIES)
def test_streamed_routing_equals_full_recompute(family):
    """Prefill 5 tokens, then one token per cached forward: weights and logits match one full forward."""
    mocae = routed_mocae(family)
    logits, weights = full_forward(mocae, IDS[:1])
    streamed_w, streamed_logits = streamed(mocae, IDS[:1], prefill=5)
    torch.testing.assert_close(streamed_w, weights, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(streamed_logits, logits, rtol=1e-4, atol=1e-5)


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


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_prompt_scope_streams_as_a_recompute_with_the_prompt_span(family):
    """context_scope="prompt": generated tokens read the prompt's summary and never join it; a full
    forward over prompt and answer gives the same weights and logits when the prompt is marked."""
    mocae = MoCaEModel(tiny_model(family), MoCaEConfig(router_context=True, context_scope="prompt"))
    randomize_mocae(mocae)
    prompt = 5
    span = (torch.arange(IDS.shape[1]) < prompt).long()[None]
    with mocae.prompt_span(span):
        logits, weights = full_forward(mocae, IDS[:1])
    streamed_w, streamed_logits = streamed(mocae, IDS[:1], prefill=prompt)
    torch.testing.assert_close(streamed_w, weights, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(streamed_logits, logits, rtol=1e-4, atol=1e-5)
    # the answer cannot move the summary: changing an answer token changes no later token's context
    features = []
    for ids in (IDS[:1], torch.cat([IDS[:1, :prompt + 1], (IDS[:1, prompt + 1 :] + 7) % VOCAB], dim=1)):
        with torch.no_grad(), mocae.prompt_span(span), mocae.record(features=True) as rec:
            mocae(input_ids=ids)
        features.append(rec.features[0][0][0, prompt:, -mocae.model.config.hidden_size :])
    torch.testing.assert_close(features[0], features[1])
    # without the span the same full forward routes differently (the answer joins the summary)
    _, unmarked = full_forward(mocae, IDS[:1])
    assert not torch.allclose(unmarked[:, :, prompt + 1 :], weights[:, :, prompt + 1 :], atol=1e-4)


def test_sequence_scope_ignores_the_prompt_span():
    mocae = routed_mocae()
    span = (torch.arange(IDS.shape[1]) < 5).long()[None]
    _, plain = full_forward(mocae, IDS[:1])
    with mocae.prompt_span(span):
        _, marked = full_forward(mocae, IDS[:1])
    assert torch.equal(plain, marked)


@pytest.mark.slow
def test_train_router_with_prompt_scope_writes_it_to_the_checkpoint(tmp_path):
    """`train router --context-scope prompt --match-phrasing`: the routers train under the scope and the
    checkpoint's config records it, so the app serves them as trained."""
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from data_fixtures import make_data_dir

    from alignx_demo import cli
    from alignx_demo.modeling import load_mocae

    data, out = make_data_dir(tmp_path / "data", n=30), tmp_path / "run"
    common = ["--data-dir", str(data), "--out", str(out), "--quick", "--no-progress", "--threads", "1"]
    assert cli.main(["train", "tokenizer", *common[:5], "--vocab-size", "400"]) == 0
    assert cli.main(["train", "base", *common, "--max-steps", "2", "--hidden-size", "32", "--layers", "1", "--heads", "2",
                     "--intermediate-size", "64", "--context", "64"]) == 0
    assert cli.main(["train", "experts", *common, "--steps", "2"]) == 0
    assert cli.main(["train", "router", *common, "--steps", "2", "--context-scope", "prompt", "--match-phrasing"]) == 0
    config = json.loads((out / "mocae_config.json").read_text())
    assert config["context_scope"] == "prompt"
    summary = json.loads((out / "logs" / "router_summary.json").read_text())
    assert summary["config"]["context_scope"] == "prompt" and summary["config"]["match_phrasing"]
    assert load_mocae(out, load_in_4bit=False).mocae.config.context_scope == "prompt"
