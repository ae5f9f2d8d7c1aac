"""The BERT decoder family (`BertLMHeadModel`, is_decoder=True), the warm-started base's family:
injection, PEFT equivalence, streaming = recompute, 4-bit NF4 and bring-your-own experts, on tiny
random BERT decoders built here."""

from __future__ import annotations

import re

import pytest
import torch

from alignx_demo.config import AXES, GenerationSettings, RoutingSettings
from alignx_demo.generation import RoutedGeneration
from alignx_demo.modeling import MoCaEModel, load_mocae, save_mocae
from alignx_demo.modeling.families import peft_target_modules

VOCAB = 320


def bert_config(**overrides):
    from transformers import BertConfig

    config = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                  max_position_embeddings=128, is_decoder=True, tie_word_embeddings=True, hidden_dropout_prob=0.0,
                  attention_probs_dropout_prob=0.0, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return BertConfig(**(config | overrides))


def bert_model(seed: int = 0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(bert_config()).eval()


def randomize(mocae: MoCaEModel, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in mocae.expert_modules.values():
            module.lora_B.copy_(torch.randn(module.lora_B.shape, generator=gen) * 0.3)
        for router in mocae.routers:
            router.proj.weight.copy_(torch.randn(router.proj.weight.shape, generator=gen))


IDS = torch.randint(3, VOCAB, (2, 9), generator=torch.Generator().manual_seed(0))


def test_bert_decoder_is_causal_and_auto_loads_as_lm_head_model():
    model = bert_model()
    assert type(model).__name__ == "BertLMHeadModel"
    with torch.no_grad():
        full = model(input_ids=IDS).logits
        changed = IDS.clone()
        changed[:, -1] = 5
        assert torch.equal(model(input_ids=changed).logits[:, :-1], full[:, :-1]), "a later token changed an earlier one"


def test_injection_targets_the_mlp_only_and_zero_experts_equal_base():
    mocae = MoCaEModel(bert_model())
    names = sorted(mocae.expert_modules)
    assert names == sorted(f"bert.encoder.layer.{i}.{t}" for i in range(2) for t in ("intermediate.dense", "output.dense"))
    assert not any("attention" in n for n in names), "attention.output.dense must not get experts"
    with torch.no_grad():
        assert torch.equal(mocae(input_ids=IDS).logits, bert_model()(input_ids=IDS).logits)
    assert len(mocae.routers) == 2


def test_peft_target_regex_matches_exactly_the_wrapped_modules():
    pattern = peft_target_modules("bert", ["intermediate.dense", "output.dense"])
    model = bert_model()
    matched = sorted(n for n, _ in model.named_modules() if re.fullmatch(pattern, n))
    assert matched == sorted(f"bert.encoder.layer.{i}.{t}" for i in range(2) for t in ("intermediate.dense", "output.dense"))
    assert peft_target_modules("llama", ["mlp.up_proj"]) == ["mlp.up_proj"]


def test_one_hot_routing_equals_the_peft_adapter(tmp_path, tokenizer):
    from peft import PeftModel

    mocae = MoCaEModel(bert_model())
    randomize(mocae)
    save_mocae(mocae, tokenizer, tmp_path / "ckpt")
    for k, axis in enumerate(AXES):
        prior = tuple(1.0 if j == k else 0.0 for j in range(3))
        with torch.no_grad(), mocae.routed(RoutingSettings(axis_prior=prior)):
            ours = mocae(input_ids=IDS).logits
        peft = PeftModel.from_pretrained(bert_model(), str(tmp_path / "ckpt" / "experts" / axis)).eval()
        with torch.no_grad():
            torch.testing.assert_close(ours, peft(input_ids=IDS).logits, rtol=1e-4, atol=1e-5)


@pytest.fixture
def bert_checkpoint(tmp_path, tokenizer):
    model = bert_model()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    mocae = MoCaEModel(model)
    randomize(mocae)
    return save_mocae(mocae, tokenizer, tmp_path / "bert-ckpt")


@pytest.mark.parametrize("four_bit", [False, True])
def test_streamed_greedy_equals_full_recompute(bert_checkpoint, tokenizer, four_bit):
    loaded = load_mocae(bert_checkpoint, load_in_4bit=four_bit)
    assert loaded.quantized == four_bit
    if four_bit:  # every linear but the tied output head is packed
        import bitsandbytes as bnb

        linears = {n: type(m) for n, m in loaded.mocae.model.named_modules() if isinstance(m, torch.nn.Linear)}
        assert linears.pop("cls.predictions.decoder") is torch.nn.Linear
        assert all(t is bnb.nn.Linear4bit for t in linears.values()), linears
    settings = RoutingSettings()
    run = RoutedGeneration(loaded.mocae, loaded.tokenizer, "How do I bake bread?", GenerationSettings(max_new_tokens=10), settings)
    for _ in run:
        pass
    trace = run.trace()
    generated = [t["id"] for t in trace["tokens"] if not t["is_prompt"]]
    ids = list(run.prompt_ids)
    with torch.no_grad(), loaded.mocae.routed(settings):  # recompute from scratch at every step
        for expected in generated:
            assert int(loaded.mocae(input_ids=torch.tensor([ids])).logits[0, -1].argmax()) == expected
            ids.append(expected)
    assert len(generated) == 10
    with torch.no_grad(), loaded.mocae.routed(settings), loaded.mocae.record() as record:
        loaded.mocae(input_ids=torch.tensor([[t["id"] for t in trace["tokens"]]]))
    full = record.stacked_weights()[:, 0]  # (L, T, 3) without the cache
    for t in trace["tokens"]:  # a generated token carries the routing of the forward that produced it
        source = t["position"] if t["is_prompt"] else t["position"] - 1
        torch.testing.assert_close(torch.tensor(t["layers"]), full[:, source], rtol=1e-4, atol=1e-4 if four_bit else 1e-5)


@pytest.mark.slow
def test_bring_your_own_bert_adapters_route_exactly_as_each_adapter(tmp_path, tokenizer):
    """Three PEFT adapters of a BERT decoder (PEFT's `output.dense` also takes `attention.output.dense`)
    import as experts; forcing one expert gives that adapter's logits."""
    from peft import LoraConfig, PeftModel, get_peft_model

    from alignx_demo.modeling.adapters import import_adapters

    base = tmp_path / "base"
    model = bert_model()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(str(base))
    tokenizer.save_pretrained(str(base))
    adapters = {}
    for k, axis in enumerate(AXES):
        peft = get_peft_model(bert_model(), LoraConfig(r=4, lora_alpha=8, target_modules=["intermediate.dense", "output.dense"],
                                                       lora_dropout=0.0))
        gen = torch.Generator().manual_seed(k + 1)
        with torch.no_grad():
            for name, p in peft.named_parameters():
                if "lora_" in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
        peft.save_pretrained(str(tmp_path / axis))
        adapters[axis] = tmp_path / axis
    summary = import_adapters(tmp_path / "moe", base, adapters)
    assert "attention.output.dense" in summary["target_modules"]
    loaded = load_mocae(tmp_path / "moe", load_in_4bit=False, allow_untrained=True)  # forced routing: routers unused
    for k, axis in enumerate(AXES):
        prior = tuple(1.0 if j == k else 0.0 for j in range(3))
        with torch.no_grad(), loaded.mocae.routed(RoutingSettings(axis_prior=prior)):
            ours = loaded.mocae(input_ids=IDS).logits
        theirs = PeftModel.from_pretrained(bert_model(), str(adapters[axis])).eval()
        with torch.no_grad():
            torch.testing.assert_close(ours, theirs(input_ids=IDS).logits, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_doctor_passes_every_step_on_a_bert_checkpoint(bert_checkpoint, tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "doctor.json"
    done = subprocess.run([sys.executable, "-m", "alignx_demo", "doctor", "--device", "cpu", "--model", str(bert_checkpoint),
                           "--new-tokens", "4", "--bench-tokens", "2", "--bench-rounds", "1", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=Path(__file__).resolve().parent.parent)
    report = json.loads(out.read_text())
    failed = {s["name"]: s.get("error") for s in report["steps"] if not s["ok"]}
    assert done.returncode == 0 and not failed, (failed, done.stderr[-2000:])
    assert "bert" in report["steps"][1]["details"]["description"]


def uncased_wordpiece():
    """A tiny uncased WordPiece tokenizer that cleans up its spaces, as the MiniLM base's does."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["[PAD]", "[UNK]", "'", ",", ".", "?", "i", "m", "t", "s", "can", "it", "sure", "you", "do", "fine", "un", "##der",
             "##stand", "the"]
    wordpiece = Tokenizer(models.WordPiece({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    wordpiece.normalizer = normalizers.BertNormalizer(lowercase=True)
    wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wordpiece.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(tokenizer_object=wordpiece, unk_token="[UNK]", pad_token="[PAD]", clean_up_tokenization_spaces=True)


def test_streamed_wordpiece_text_reads_as_the_full_decode():
    """The uncased WordPiece decoding spaces apostrophes ("i ' m"); streamed pieces get the tokenizer's
    own clean-up, so they add up to `decode` ("i'm"), held back only while an apostrophe waits."""
    from alignx_demo.generation import IncrementalDecoder

    tokenizer = uncased_wordpiece()
    ids = tokenizer("I'm sure you can't, it's fine. I understand '", add_special_tokens=False)["input_ids"]
    decoder = IncrementalDecoder(tokenizer, skip_special_tokens=True)
    pieces = [decoder.push(i) for i in ids]
    assert "".join(pieces) + decoder.remainder() == tokenizer.decode(ids) == "i'm sure you can't, it's fine. i understand '"
    assert pieces[1] == "" and pieces[2] == "'m", "the apostrophe waits for the token that decides its spaces"


def test_the_header_says_an_uncased_model_writes_lowercase(bert_checkpoint):
    from alignx_demo.serving import ModelContext
    from alignx_demo.ui.app import status_html

    loaded = load_mocae(bert_checkpoint, load_in_4bit=False)
    assert "lowercase" not in status_html(ModelContext(loaded))
    loaded.tokenizer = uncased_wordpiece()
    assert "reads and writes lowercase" in status_html(ModelContext(loaded))
