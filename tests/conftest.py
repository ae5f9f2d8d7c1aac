"""Tiny models and tokenizers the tests build themselves (nothing is downloaded)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, torch.get_num_threads()))

VOCAB = 320
FAMILIES = ("llama", "qwen2", "mistral", "gemma", "gpt2")

TOKENIZER_TEXT = [
    "How do I bake bread? Mix flour, water, salt and yeast, knead, let it rise, then bake.",
    "I cannot help with that request because it could hurt people.",
    "I do not know the answer for certain; the evidence suggests otherwise.",
    "The capital of France is Paris. Water boils at 100 degrees Celsius at sea level.",
]


def tiny_config(family: str):
    import transformers as tf

    common = dict(vocab_size=VOCAB, max_position_embeddings=128)
    if family == "gpt2":
        return tf.GPT2Config(vocab_size=VOCAB, n_positions=128, n_embd=64, n_layer=2, n_head=4)
    llama_like = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, **common)
    if family == "llama":
        return tf.LlamaConfig(num_key_value_heads=4, **llama_like)
    if family == "qwen2":
        return tf.Qwen2Config(num_key_value_heads=2, **llama_like)
    if family == "mistral":
        return tf.MistralConfig(num_key_value_heads=2, **llama_like)
    if family == "gemma":
        return tf.GemmaConfig(num_key_value_heads=2, head_dim=16, **llama_like)
    raise ValueError(family)


def tiny_model(family: str = "llama", seed: int = 0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(family)).eval()


def randomize_mocae(mocae, seed: int = 1, scale: float = 0.3) -> None:
    """Give experts and routers non-zero weights so every path carries signal."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in mocae.expert_modules.values():
            module.lora_B.copy_(torch.randn(module.lora_B.shape, generator=gen) * scale)
        for router in mocae.routers:
            router.proj.weight.copy_(torch.randn(router.proj.weight.shape, generator=gen))
            router.proj.bias.copy_(torch.randn(router.proj.bias.shape, generator=gen))


@pytest.fixture(scope="session")
def tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from alignx_demo.data.templates import BOS, EOS, PAD, SPECIAL_TOKENS

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tk.train_from_iterator(TOKENIZER_TEXT * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token=BOS, eos_token=EOS, pad_token=PAD)


def build_checkpoint(out: Path, tokenizer, family: str = "llama", seed: int = 0, calibration=None) -> Path:
    """A full MoCaE checkpoint folder with random (non-zero) experts and routers."""
    from alignx_demo.modeling import MoCaEModel, save_mocae

    model = tiny_model(family, seed)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    mocae = MoCaEModel(model, calibration=calibration)
    randomize_mocae(mocae, seed + 1)
    save_mocae(mocae, tokenizer, out)
    return out


@pytest.fixture
def checkpoint(tmp_path, tokenizer) -> Path:
    from alignx_demo.modeling import TemperatureScaling
    from alignx_demo.modeling.calibration import CalibrationStack

    calibration = CalibrationStack(TemperatureScaling(torch.tensor([2.0, 0.5])))
    return build_checkpoint(tmp_path / "ckpt", tokenizer, calibration=calibration)
