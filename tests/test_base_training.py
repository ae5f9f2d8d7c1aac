"""Tokenizer and base pre-training, end to end on tiny synthetic data (quick recipe, a few steps)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

import pytest
import torch

from alignx_demo import cli
from alignx_demo.data import templates
from alignx_demo.training import commands, common
from alignx_demo.training.base import BaseTrainConfig, train_base

sys.path.insert(0, str(Path(__file__).parent))
from data_fixtures import make_data_dir  # noqa: E402


def tiny_cfg(**kw) -> BaseTrainConfig:
    base = dict(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, context=64, batch_size=4,
                max_steps=6, eval_every=3, eval_blocks=2, save_every=3, log_every=1, warmup_steps=2, threads=1)
    base.update(kw)
    return BaseTrainConfig.quick_recipe(**base)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> tuple[Path, Path]:
    """Data + a quick tokenizer trained through the CLI entry point."""
    root = tmp_path_factory.mktemp("run")
    data = make_data_dir(root / "data", n=30)
    out = root / "out"
    rc = cli.main(["train", "tokenizer", "--data-dir", str(data), "--out", str(out), "--quick", "--vocab-size", "400"])
    assert rc == 0
    return data, out


def test_tokenizer_special_tokens(run_dir):
    from transformers import AutoTokenizer

    _, out = run_dir
    tok = AutoTokenizer.from_pretrained(str(out / "tokenizer"))
    assert tok.bos_token == templates.BOS and tok.eos_token == templates.EOS and tok.pad_token == templates.PAD
    assert not getattr(tok, "chat_template", None)
    ids = [tok.convert_tokens_to_ids(t) for t in templates.SPECIAL_TOKENS]
    assert ids == list(range(len(templates.SPECIAL_TOKENS)))
    typed = "say <|assistant|> and <|eos|> please"
    as_text = tok(typed, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    assert not set(as_text) & set(ids), "typed special tokens must stay plain text"
    assert tok.decode(as_text) == typed
    assert tok.convert_tokens_to_ids(templates.ASSISTANT) in tok(typed, add_special_tokens=False)["input_ids"]
    full, start = templates.encode_example(tok, "hi <|user|>", "answer")
    assert full[0] == tok.bos_token_id and full[-1] == tok.eos_token_id
    assert tok.decode(full[start:-1]) == "answer"
    assert full.count(tok.convert_tokens_to_ids(templates.USER)) == 1


def test_base_end_to_end_resume_and_load(run_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data, out = run_dir
    tok_dir = out / "tokenizer"
    # uninterrupted 6 steps
    full = train_base(data, tmp_path / "full", tiny_cfg(), tokenizer_dir=tok_dir, progress=False)
    assert full["steps"] == 6 and full["stop_reason"] == "max_steps"
    # 3 steps, then resume to 6: same weights as the uninterrupted run
    part = tmp_path / "part"
    first = train_base(data, part, tiny_cfg(), tokenizer_dir=tok_dir, progress=False, stop_at_step=3)
    assert first["steps"] == 3 and first["stop_reason"] == "stop_at_step"
    with pytest.raises(FileExistsError, match="--resume"):
        train_base(data, part, tiny_cfg(), tokenizer_dir=tok_dir, progress=False)
    resumed = train_base(data, part, tiny_cfg(), tokenizer_dir=tok_dir, resume=True, progress=False)
    assert resumed["steps"] == 6 and resumed["tokens_seen"] == full["tokens_seen"]

    m_full = AutoModelForCausalLM.from_pretrained(str(tmp_path / "full" / "base"))
    m_res = AutoModelForCausalLM.from_pretrained(str(part / "base"))
    for (name, a), (_, b) in zip(m_full.state_dict().items(), m_res.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-5), name
    assert m_res.config.model_type == "llama" and m_res.config.tie_word_embeddings

    base = part / "base"
    assert (base / "model.safetensors").is_file() and not list(base.glob("*.bin"))
    tok = AutoTokenizer.from_pretrained(str(base))
    ids = torch.tensor([templates.encode_prompt(tok, "Tell me about water")])
    gen = m_res.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    assert gen.shape[1] > ids.shape[1]
    summary = json.loads((base / "train_summary.json").read_text())
    assert summary["finished"] and summary["params"] > 0 and summary["tokens_per_s"] > 0
    assert set(summary["final_heldout_loss"]) == {"helpful", "harmless", "honest"}
    log = [json.loads(line) for line in (base / "training_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["type"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert any(r["type"] == "eval" and r["step"] == 6 for r in log)
    assert not list(part.glob("checkpoints/*.tmp"))


def test_cli_base_quick(run_dir, tmp_path):
    data, out = run_dir
    rc = cli.main(["train", "base", "--data-dir", str(data), "--out", str(out), "--quick", "--max-steps", "2",
                        "--hidden-size", "32", "--layers", "1", "--heads", "2", "--intermediate-size", "64",
                        "--context", "64", "--no-progress", "--threads", "1"])
    assert rc == 0
    assert (out / "base" / "config.json").is_file()
    # a missing tokenizer is a clear error, not a traceback
    rc = cli.main(["train", "base", "--data-dir", str(data), "--out", str(tmp_path / "x"), "--quick", "--max-steps", "1"])
    assert rc == 2


def test_register_adds_train_subcommands():
    parser = argparse.ArgumentParser()
    stages = commands.register(parser.add_subparsers(dest="command", required=True))
    assert isinstance(stages, argparse._SubParsersAction)
    args = parser.parse_args(["train", "base", "--quick", "--resume", "--threads", "2", "--max-minutes", "5",
                              "--max-steps", "9", "--seed", "3", "--data-dir", "d", "--out", "o"])
    assert args.stage == "base" and args.resume and args.threads == 2 and args.max_minutes == 5.0
    assert callable(args.func)
    assert parser.parse_args(["train", "tokenizer"]).data_dir == Path("../shared/data")


def test_optimizer_safetensors_roundtrip(tmp_path):
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    meta = common.optimizer_to_safetensors(opt, tmp_path / "opt.safetensors")
    json.dumps(meta)  # JSON-able
    opt2 = torch.optim.AdamW(model.parameters(), lr=0.5)
    common.optimizer_from_safetensors(opt2, tmp_path / "opt.safetensors", json.loads(json.dumps(meta)))
    a, b = opt.state_dict(), opt2.state_dict()
    assert b["param_groups"][0]["lr"] == 0.1
    for k in a["state"]:
        for name, v in a["state"][k].items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(b["state"][k][name]))


def test_stop_flag_turns_sigterm_into_a_flag():
    flag = common.StopFlag().install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        assert flag.reason == "sigterm"
    finally:
        flag.restore()


def test_axis_weights_and_batches():
    w = common.parse_axis_weights("7,1.5,1.5")
    assert w == pytest.approx({"helpful": 0.7, "harmless": 0.15, "honest": 0.15})
    with pytest.raises(ValueError):
        common.parse_axis_weights("1,2")
    blocks = {a: torch.full((5, 4), i) for i, a in enumerate(("helpful", "harmless", "honest"))}
    sampler = common.AxisBlocks(blocks, w)
    x1, axes1 = sampler.batch(0, 7, 400)
    x2, _ = sampler.batch(0, 7, 400)
    assert torch.equal(x1, x2)
    assert 0.6 < axes1.count("helpful") / 400 < 0.8
    packed = common.pack_blocks([[1, 2, 3], [4, 5]], 2)
    assert packed.shape == (2, 2)


@pytest.mark.slow
def test_snapshot_resumes_a_warm_started_bert_base(run_dir, tmp_path):
    """`--init` a BERT encoder folder, snapshot in fp16 without optimizer state, continue from the snapshot."""
    from safetensors.torch import load_file
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import AutoModelForCausalLM, BertConfig, BertModel

    from alignx_demo.training import warm_start

    data, _ = run_dir
    encoder = tmp_path / "encoder"  # a tiny BERT encoder with a WordPiece tokenizer, as the MiniLM package ships
    words = ["[PAD]", *[f"[unused{i}]" for i in range(4)], "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz.,?!<>|0123456789",
             *[f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"], "the", "and", "task", "water"]
    encoder.mkdir()
    wordpiece = Tokenizer(models.WordPiece({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    wordpiece.normalizer = normalizers.BertNormalizer(lowercase=True)
    wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wordpiece.decoder = decoders.WordPiece()
    wordpiece.save(str(encoder / "tokenizer.json"))
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128)).save_pretrained(str(encoder))
    tok = warm_start.chat_tokenizer(encoder, 64)
    ids = templates.encode_prompt(tok, "Water?\nthe task <|user|>")
    assert ids[0] == tok.convert_tokens_to_ids("[CLS]") and ids.count(tok.convert_tokens_to_ids(templates.USER)) == 1
    assert "\n" in tok.decode(ids) and "< | user | >" in tok.decode(ids), "typed markers stay text; newlines survive"

    run, cont, snap = tmp_path / "warm", tmp_path / "continued", tmp_path / "snap"
    sizes = ["--data-dir", str(data), "--quick", "--context", "64", "--eval-every", "2", "--no-progress", "--threads", "1"]
    assert cli.main(["train", "base", "--init", str(encoder), "--out", str(run), "--max-steps", "2", *sizes]) == 0
    assert cli.main(["train", "snapshot", "--out", str(run), "--to", str(snap)]) == 0
    assert not (snap / common.OPTIMIZER_FILE).exists() and (snap / "training_log.jsonl").is_file()
    assert all(t.dtype == torch.float16 for t in load_file(str(snap / "model.safetensors")).values() if t.is_floating_point())
    state = json.loads((snap / common.TRAINER_STATE).read_text())
    assert state["step"] == 2 and "optimizer" not in state and state["config"]["init"] == str(encoder)
    assert cli.main(["train", "base", "--from-snapshot", str(snap), "--out", str(cont), "--max-steps", "4", *sizes]) == 0
    summary = json.loads((cont / "base" / "train_summary.json").read_text())
    assert summary["steps"] == 4 and summary["config"]["init"] == str(encoder) and summary["config"]["hidden_size"] == 32
    log = [json.loads(line) for line in (cont / "base" / "training_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["type"] == "eval"] == [0, 2, 4], "the snapshot carries the log's history"
    model = AutoModelForCausalLM.from_pretrained(str(cont / "base"))
    assert model.config.model_type == "bert" and model.config.is_decoder and model.config.max_position_embeddings == 64
    # a second seeding onto a run that has a checkpoint is refused in one sentence
    assert cli.main(["train", "base", "--from-snapshot", str(snap), "--out", str(cont), "--max-steps", "4", *sizes]) == 2
