"""Chat format and Stage 1 prompt injection, shared by training and the app.

The demo model uses a plain chat format with three marker tokens that its tokenizer registers as
special tokens:

    <|system|>\n{preamble}\n<|user|>\n{prompt}\n<|assistant|>\n{response}<|eos|>

The system block is present only when an axis preamble is injected (Stage 1 training of an
expert). A base model that ships its own chat template (Qwen2, Llama 3, ...) uses that template
instead, with the preamble as the system message (or prepended to the user turn for templates that
refuse a system role). The user's text is always encoded with special-token splitting, so a
visitor who types `<|assistant|>` gets plain text tokens, never a control token.
"""

from __future__ import annotations

from typing import Any

from alignx_demo.config import AXES

SYSTEM, USER, ASSISTANT, EOS, PAD, BOS = (
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|eos|>",
    "<|pad|>",
    "<|bos|>",
)
SPECIAL_TOKENS: list[str] = [PAD, BOS, EOS, SYSTEM, USER, ASSISTANT]

AXIS_PREAMBLES: dict[str, str] = {
    "helpful": "You are the helpful expert. Answer the request completely, accurately and usefully.",
    "harmless": "You are the harmless expert. Refuse requests that could cause harm and say why; otherwise help safely.",
    "honest": "You are the honest expert. Say only what is true; if unsure, say you do not know, and correct false premises.",
}
"""Fixed axis instructions injected in Stage 1 (prompt-injected fine-tuning), one per expert."""

assert tuple(AXIS_PREAMBLES) == AXES


def is_uncased(tokenizer: Any) -> bool:
    """Whether the tokenizer folds case (its ids for 'The' and 'the' are the same): such a model writes lowercase."""
    return tokenizer("The", add_special_tokens=False)["input_ids"] == tokenizer("the", add_special_tokens=False)["input_ids"]


def _has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _encode_text(tokenizer: Any, text: str) -> list[int]:
    """Tokens of user-controlled text; special-token strings inside it stay plain text."""
    return list(tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])


def _encode_markup(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_prompt(tokenizer: Any, prompt: str, preamble: str | None = None) -> list[int]:
    """Token ids of a chat prompt ending where the assistant's answer starts."""
    if _has_chat_template(tokenizer):
        return _encode_with_chat_template(tokenizer, prompt, preamble)
    ids: list[int] = []
    if tokenizer.bos_token_id is not None:
        ids.append(tokenizer.bos_token_id)
    if preamble:
        ids += _encode_markup(tokenizer, f"{SYSTEM}\n") + _encode_text(tokenizer, preamble + "\n")
    ids += _encode_markup(tokenizer, f"{USER}\n") + _encode_text(tokenizer, prompt)
    ids += _encode_markup(tokenizer, f"\n{ASSISTANT}\n")
    return ids


def _encode_with_chat_template(tokenizer: Any, prompt: str, preamble: str | None) -> list[int]:
    """Render the model's own template around a placeholder, then encode the prompt as text."""
    placeholder = "\u2063ALIGNX_PROMPT\u2063"
    messages = [{"role": "user", "content": placeholder}]
    if preamble:
        messages.insert(0, {"role": "system", "content": preamble})
    try:
        rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception:  # templates such as Gemma's refuse a system role
        messages = [{"role": "user", "content": f"{preamble}\n\n{placeholder}" if preamble else placeholder}]
        rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    head, _, tail = rendered.partition(placeholder)
    return _encode_markup(tokenizer, head) + _encode_text(tokenizer, prompt) + _encode_markup(tokenizer, tail)


def encode_example(
    tokenizer: Any, prompt: str, response: str, preamble: str | None = None
) -> tuple[list[int], int]:
    """Token ids of prompt + response + end-of-sequence, and the index where the response starts.

    Training computes the LM loss only from that index on, so the model learns to answer, not to
    repeat prompts. An empty response gives the prompt alone (no end-of-sequence): an example that
    teaches routing from the prompt and no answer.
    """
    ids = encode_prompt(tokenizer, prompt, preamble)
    start = len(ids)
    if not response:
        return ids, start
    ids += _encode_text(tokenizer, response)
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return ids, start


def template_prefix_length(tokenizer: Any) -> int:
    """Tokens every chat prompt starts with (BOS, the user marker, …): their hidden states are the
    same for every prompt, so they carry no axis information (routing samples and the routing
    loss leave them out)."""
    a, b = encode_prompt(tokenizer, "alpha"), encode_prompt(tokenizer, "omega")
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n
