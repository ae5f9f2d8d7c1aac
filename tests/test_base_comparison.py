"""The base comparison's measures: definitions with known answers, and a run over two tiny bases of
different families and tokenizers (a Llama with the test BPE tokenizer, a BERT decoder)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from alignx_demo import cli
from alignx_demo.data import behaviour
from alignx_demo.evaluation import base_comparison as bc

sys.path.insert(0, str(Path(__file__).parent))
from conftest import tiny_config, tiny_model  # noqa: E402
from data_fixtures import make_data_dir  # noqa: E402
from test_bert_family import bert_config  # noqa: E402


def test_content_words_and_on_topic():
    assert behaviour.content_words("How do I make a cup of Tea?") == {"cup", "tea"}
    assert behaviour.content_words("Plants, glasses, berries and the bus") == {"plant", "glass", "berry", "bus"}
    assert behaviour.on_topic("Give me a recipe for banana bread", "Mash two bananas, add flour.")
    assert not behaviour.on_topic("Give me a recipe for banana bread", "Keep 1: Sedge and Sedge 2")
    assert not behaviour.on_topic("How do I make tea?", "I do not know how to help with that.")


def test_bits_per_character_is_answer_bits_over_answer_characters(tokenizer):
    from alignx_demo.data.templates import encode_example

    model = tiny_model("llama")
    prompt, answer = "How do I bake bread?", "Mix flour and water."
    ids, start = encode_example(tokenizer, prompt, answer)
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, :-1], -1)
    nats = -sum(float(logp[i - 1, ids[i]]) for i in range(start, len(ids)))
    pairs = [(prompt, answer), ("x " * 200, "too long for the context"), ("Hi", "Hello there.")]
    bits = bc.answer_bits(model, tokenizer, pairs)
    assert math.isclose(bits[0], nats / math.log(2), rel_tol=1e-4) and bits[1] is None
    got = bc.bits_per_character(bits, pairs, keep=[True, True, False])
    assert math.isclose(got["bits_per_char"], nats / math.log(2) / len(answer), rel_tol=1e-4)
    assert got["answers"] == 1 and got["left_out"] == 2


@pytest.mark.slow
def test_compare_bases_cli_runs_both_families(tmp_path, tokenizer):
    import json

    from transformers import AutoModelForCausalLM

    data = make_data_dir(tmp_path / "data", n=30)
    long = tiny_config("llama")
    long.max_position_embeddings = 512  # the synthetic answers run to ~300 tokens of the test tokenizer
    for name, config in (("llama", long), ("bert", bert_config(max_position_embeddings=512))):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config).eval()
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.save_pretrained(str(tmp_path / name))
        tokenizer.save_pretrained(str(tmp_path / name))
    out = tmp_path / "cmp.json"
    rc = cli.main(["compare-bases", "--base", f"scratch={tmp_path / 'llama'}", "--base", f"warm={tmp_path / 'bert'}",
                   "--data-dir", str(data), "--out", str(out), "--no-progress", "--max-new-tokens", "4",
                   "--per-axis", "20"])
    assert rc == 0
    report = json.loads(out.read_text())
    assert set(report["bases"]) == {"scratch", "warm"} and report["command"].startswith("python -m alignx_demo")
    for r in report["bases"].values():
        assert r["heldout"]["answers"] > 0 and r["heldout"]["bits_per_char"] > 0 and "answer_bits" not in r
        assert len(r["answers"]) == report["sets"]["helpful_prompts"] and 0 <= r["on_topic_rate"] <= 1
        assert {"eval_split", "hand_written"} <= set(r["routing_readout"])
    assert len({r["heldout"]["answers"] for r in report["bases"].values()}) == 1, "every base is scored on the same answers"
    assert report["bases"]["warm"]["model_type"] == "bert"
    assert cli.main(["compare-bases", "--base", "nofolder", "--out", str(out)]) == 2
