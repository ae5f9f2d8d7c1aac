"""Tiny models and tokenizers the tests build themselves (nothing is downloaded), the one trained quick run
every test of a trained model shares, and the `slow` marker of the tests that need it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from alignx_demo.modeling.families import SUPPORTED_FAMILIES

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, torch.get_num_threads()))

VOCAB = 320
FAMILIES = SUPPORTED_FAMILIES
"""Every family the library claims (`modeling.families`): each has a tiny config below."""

TOKENIZER_TEXT = [
    "How do I bake bread? Mix flour, water, salt and yeast, knead, let it rise, then bake.",
    "I cannot help with that request because it could hurt people.",
    "I do not know the answer for certain; the evidence suggests otherwise.",
    "The capital of France is Paris. Water boils at 100 degrees Celsius at sea level.",
]


def tiny_config(family: str):
    """A two-layer config of `family` with this file's vocabulary: one per family the library claims."""
    import transformers as tf

    common = dict(vocab_size=VOCAB, max_position_embeddings=128)
    if family == "gpt2":
        return tf.GPT2Config(vocab_size=VOCAB, n_positions=128, n_embd=64, n_layer=2, n_head=4)
    if family == "bert":
        return tf.BertConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                             is_decoder=True, **common)
    llama_like = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, **common)
    configs = {
        "llama": lambda: tf.LlamaConfig(num_key_value_heads=4, **llama_like),
        "qwen2": lambda: tf.Qwen2Config(num_key_value_heads=2, **llama_like),
        "qwen3": lambda: tf.Qwen3Config(num_key_value_heads=2, head_dim=16, **llama_like),
        "mistral": lambda: tf.MistralConfig(num_key_value_heads=2, **llama_like),
        "gemma": lambda: tf.GemmaConfig(num_key_value_heads=2, head_dim=16, **llama_like),
        "gemma2": lambda: tf.Gemma2Config(num_key_value_heads=2, head_dim=16, sliding_window=8, **llama_like),
        "gemma3_text": lambda: tf.Gemma3TextConfig(num_key_value_heads=2, head_dim=16, sliding_window=8, **llama_like),
        "phi3": lambda: tf.Phi3Config(num_key_value_heads=4, pad_token_id=0, bos_token_id=1, eos_token_id=2, **llama_like),
    }
    if family not in configs:
        raise ValueError(f"no tiny config for family {family!r}: add one here for every family in SUPPORTED_FAMILIES")
    return configs[family]()


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


@pytest.fixture(scope="session")
def trained_run() -> tuple[Path, Path]:
    """(checkpoint, data folder) of one quick `train all` on synthetic data, built on first use (minutes) and
    shared by every test of the session that needs a trained model (`app_fixtures.quick_run`)."""
    from app_fixtures import quick_run

    return quick_run()


@pytest.fixture(scope="session")
def trained_precomputed(trained_run: tuple[Path, Path]) -> Path:
    """`precompute --quick` of `trained_run` (PCA maps), built once per session."""
    from app_fixtures import quick_precomputed

    return quick_precomputed()


TRAINED_FIXTURES = frozenset({"trained_run", "trained_precomputed"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that uses the trained run is slow: the first one pays for `train all --quick`."""
    for item in items:
        if TRAINED_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


LABELLED_PROMPTS = [
    ("How do I bake bread?", "helpful", "alpaca"),
    ("I cannot help with that request because it could hurt people. Why?", "harmless", "advbench"),
    ("Is the capital of France Paris?", "honest", "tqa"),
    ("Mix flour, water, salt and yeast, knead, let it rise, then bake. What next?", "helpful", "alpaca"),
    ("Water boils at 100 degrees?", "honest", "tqa"),
    ("Hurt people?", "harmless", "advbench"),
]
"""Six labelled prompts (prompt, axis, source) in the tiny tokenizer's words, for the research tools' tests."""
