"""Streaming generation that yields every token together with the routing that produced it.

Convention for the routing carried by each token (the UI's labels rely on it):
- a **prompt token** at position i carries the routing computed at position i during prefill
  (its own hidden states, which see tokens 0..i);
- a **generated token** at position i carries the routing of the forward pass whose logits it was
  drawn from, i.e. the routing computed at position i − 1. The first generated token therefore
  carries the same weights as the last prompt token, and no extra forward is run for the last
  token.
Each entry holds the weights per layer (L × K, K the model's axes `MoCaEModel.axes`), their mean over
layers (`weights`, keyed by axis), the routing
entropy (mean over layers of the per-layer entropy, in nats) and the top expert (argmax of the
mean). Decoding uses the KV cache; greedy decoding gives exactly the tokens of `model.generate`.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

from alignx_demo.config import AXES, GenerationSettings, RoutingSettings, validate_axis_prior
from alignx_demo.data.templates import encode_prompt
from alignx_demo.modeling.mocae import MoCaEModel

TRACE_SCHEMA = "alignx-trace/1"
MAX_PROMPT_CHARS = 8000
"""Longer prompts are cut (keeping the end, nearest the question) before tokenisation."""
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
CONVENTION = (
    "prompt tokens carry the routing computed at their own position; each generated token "
    "carries the routing of the forward pass that produced it (computed at the previous position)"
)


def clean_prompt(prompt: object, max_chars: int = MAX_PROMPT_CHARS) -> tuple[str, list[str]]:
    """The prompt without control characters or lone surrogates, cut to its last `max_chars`
    characters, and notices saying what changed; a ValueError for a non-text or empty prompt."""
    if not isinstance(prompt, str):
        raise ValueError(f"the prompt must be text, got {type(prompt).__name__}")
    notices = []
    text = prompt.encode("utf-8", "replace").decode("utf-8")
    if text != prompt:
        notices.append("invalid characters (lone surrogates) replaced by '?'")
    cleaned = _CONTROL.sub("", text)
    if cleaned != text:
        notices.append(f"{len(text) - len(cleaned)} control character(s) removed from the prompt")
    if len(cleaned) > max_chars:
        notices.append(f"prompt cut to its last {max_chars} of {len(cleaned)} characters")
        cleaned = cleaned[-max_chars:]
    if not cleaned.strip():
        raise ValueError("the prompt is empty: type a question or an instruction")
    return cleaned, notices


@dataclass
class TokenTrace:
    """One token and the routing weights attached to it (see the module docstring)."""

    text: str
    id: int
    position: int
    is_prompt: bool
    weights: dict[str, float]
    layers: list[list[float]]
    entropy: float
    top_expert: str

    @classmethod
    def from_weights(cls, text: str, token_id: int, position: int, is_prompt: bool, layer_weights: torch.Tensor,
                     axes: tuple[str, ...] = AXES) -> TokenTrace:
        """Build from the (L, K) weights of one position, K the model's `axes` in order."""
        lw = layer_weights.float().cpu()
        mean = lw.mean(dim=0)
        entropy = float(-(lw.clamp_min(1e-12).log() * lw).sum(dim=-1).mean())
        return cls(
            text=text,
            id=int(token_id),
            position=int(position),
            is_prompt=is_prompt,
            weights={axis: round(float(mean[k]), 6) for k, axis in enumerate(axes)},
            layers=[[round(float(v), 6) for v in row] for row in lw.tolist()],
            entropy=round(entropy, 6),
            top_expert=axes[int(mean.argmax())],
        )


class IncrementalDecoder:
    """Turns a stream of token ids into text pieces without splitting multi-byte characters.

    Decodes a short window around the newest token and emits only the new, complete text;
    a piece that would end in a broken character waits for the next token. A tokenizer that cleans
    up its spaces (WordPiece: "i ' m" reads "i'm") is decoded with that cleanup, and a piece ending
    in a spaced apostrophe waits too, since the next token decides whether the space goes, so the
    pieces add up to what `tokenizer.decode` gives.
    """

    def __init__(self, tokenizer: Any, skip_special_tokens: bool) -> None:
        self.tokenizer = tokenizer
        self.skip = skip_special_tokens
        self.cleanup = bool(getattr(tokenizer, "clean_up_tokenization_spaces", False))
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0
        self.emitted = ""

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip, clean_up_tokenization_spaces=self.cleanup)

    def _unfinished(self, text: str) -> bool:
        return text.endswith("\ufffd") or (self.cleanup and text.endswith(" '"))

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        text = self._decode(self.ids[self.prefix_offset :])
        if len(text) > len(prefix) and not self._unfinished(text):
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            piece = text[len(prefix) :]
            self.emitted += piece
            return piece
        return ""

    def remainder(self) -> str:
        """Text still held back at the end (an unfinished character), so pieces add up to the full text."""
        full = self._decode(self.ids)
        return full[len(self.emitted) :] if full.startswith(self.emitted) else ""


def context_length(model: torch.nn.Module) -> int:
    return int(getattr(model.config, "max_position_embeddings", 0) or 2048)


def input_device(model: torch.nn.Module) -> torch.device:
    """Where input ids go: the input embedding's device (the first device of a model split over several)."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embeddings is not None and getattr(embeddings, "weight", None) is not None:
        return embeddings.weight.device
    return next(model.parameters()).device


def sampling_generator(device: torch.device | str, seed: int) -> torch.Generator:
    """A generator seeded with `seed` on `device`: `torch.multinomial` needs one on the device of the
    probabilities it samples (a CPU generator cannot drive CUDA sampling). The same seed gives the same
    draws on the same device; CPU and CUDA draws differ."""
    return torch.Generator(device=device).manual_seed(seed)


@dataclass
class RoutedGeneration:
    """An iterator over TokenTraces (prompt tokens first, then generated ones).

    After (or during) iteration, `trace()` returns the full trace as plain data. Generation ends
    early when `stop_event` is set (finish_reason "stopped") or at `deadline`, a `time.monotonic()`
    time (finish_reason "time_limit", with a notice), so a server can bound each request.
    """

    mocae: MoCaEModel
    tokenizer: Any
    prompt: str
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    routing: RoutingSettings = field(default_factory=RoutingSettings)
    stop_event: threading.Event | None = None
    deadline: float | None = None
    max_prompt_chars: int = MAX_PROMPT_CHARS
    model_name: str = ""
    tokens: list[TokenTrace] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    _sampler: tuple[torch.device, torch.Generator] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.routing.axis_prior is not None:  # one number per axis of this model, said before any forward
            validate_axis_prior(self.routing.axis_prior, self.mocae.axes)
        self.prompt = self._clean(self.prompt)
        self.prompt_ids, self.max_new_tokens = self._fit_context(encode_prompt(self.tokenizer, self.prompt))

    def _clean(self, prompt: object) -> str:
        cleaned, notices = clean_prompt(prompt, self.max_prompt_chars)
        self.notices.extend(notices)
        return cleaned

    def _fit_context(self, ids: list[int]) -> tuple[list[int], int]:
        ctx = context_length(self.mocae.model)
        max_new = self.generation.max_new_tokens
        if max_new > ctx // 2:
            self.notices.append(f"max_new_tokens lowered from {max_new} to {ctx // 2} (context is {ctx} tokens)")
            max_new = ctx // 2
        keep = ctx - max_new
        if len(ids) > keep:
            self.notices.append(f"prompt truncated from the left: {len(ids)} tokens to the last {keep} (context {ctx})")
            ids = ids[-keep:]
        return ids, max_new

    def _forward(self, input_ids: torch.Tensor, cache: Any) -> tuple[torch.Tensor, Any, torch.Tensor]:
        """One forward under this generation's routing: (last logits, cache, weights (L, T, K) on the CPU)."""
        with self.mocae.lock, self.mocae.routed(self.routing), self.mocae.record() as record, torch.no_grad():
            out = self.mocae(input_ids=input_ids, past_key_values=cache, use_cache=True)
        return out.logits[0, -1].float(), out.past_key_values, record.stacked_weights()[:, 0].float().cpu()

    def _next_token(self, logits: torch.Tensor, history: torch.Tensor) -> int:
        if not self.generation.do_sample:
            return int(logits.argmax())
        scores = logits.unsqueeze(0)
        scores = TemperatureLogitsWarper(self.generation.temperature)(history, scores)
        if self.generation.top_p < 1.0:
            scores = TopPLogitsWarper(self.generation.top_p)(history, scores)
        probs = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probs, 1, generator=self._generator(probs.device))[0, 0])

    def _generator(self, device: torch.device) -> torch.Generator:
        """The seeded sampling generator, on the device of the probabilities it draws from (made once)."""
        if self._sampler is None or self._sampler[0] != device:
            self._sampler = (device, sampling_generator(device, self.generation.seed))
        return self._sampler[1]

    def __iter__(self) -> Iterator[TokenTrace]:
        device = input_device(self.mocae.model)
        ids = torch.tensor([self.prompt_ids], device=device)
        logits, cache, weights = self._forward(ids, None)
        prompt_decoder = IncrementalDecoder(self.tokenizer, skip_special_tokens=False)
        for i, token_id in enumerate(self.prompt_ids):
            trace = TokenTrace.from_weights(prompt_decoder.push(token_id), token_id, i, True, weights[:, i], self.mocae.axes)
            self.tokens.append(trace)
            yield trace
        decoder = IncrementalDecoder(self.tokenizer, skip_special_tokens=True)
        eos = set(_as_list(self.tokenizer.eos_token_id)) | set(_as_list(getattr(self.mocae.model.generation_config, "eos_token_id", None)))
        step_weights = weights[:, -1]
        history = ids
        for step in range(self.max_new_tokens):
            if self.stop_event is not None and self.stop_event.is_set():
                self.finish_reason = "stopped"
                return
            if self.deadline is not None and time.monotonic() >= self.deadline:
                self.finish_reason = "time_limit"
                self.notices.append(f"generation stopped at the time limit after {step} new token(s)")
                return
            token_id = self._next_token(logits, history)
            position = len(self.prompt_ids) + step
            trace = TokenTrace.from_weights(decoder.push(token_id), token_id, position, False, step_weights, self.mocae.axes)
            if token_id in eos or step == self.max_new_tokens - 1:
                trace.text += decoder.remainder()
            self.tokens.append(trace)
            yield trace
            if token_id in eos:
                self.finish_reason = "eos"
                return
            if step == self.max_new_tokens - 1:
                break
            next_ids = torch.tensor([[token_id]], device=device)
            history = torch.cat([history, next_ids], dim=1)
            logits, cache, new_weights = self._forward(next_ids, cache)
            step_weights = new_weights[:, -1]
        self.finish_reason = "length"

    @property
    def text(self) -> str:
        return "".join(t.text for t in self.tokens if not t.is_prompt)

    def run_weights(self) -> dict[str, float]:
        """The run's weights as the page's summaries show them — the generation-level figure `evaluate`
        measures: the layer-mean weights averaged over the generated tokens. When nothing was generated,
        the prompt tokens' mean, which under calibrated routing without an axis prior goes through the
        calibration's pooled part (`CalibrationStack.pool`): that part is fitted on prompt-token means,
        and on generated-token means — already confident — it made calibration worse (measured on the
        bundle: generation-level ECE 0.116 with the token parts alone, 0.177 pooled, 0.174 raw)."""
        generated = [t for t in self.tokens if not t.is_prompt]
        tokens = generated or self.tokens
        axes = self.mocae.axes
        mean = torch.tensor([[sum(t.weights[a] for t in tokens) / max(len(tokens), 1) for a in axes]])
        calibration = self.mocae.calibration
        if self.routing.calibrated and calibration is not None and self.routing.axis_prior is None and tokens and not generated:
            mean = calibration.pool(mean)
        return {a: round(float(v), 6) for a, v in zip(axes, mean[0])}

    def trace(self) -> dict[str, Any]:
        calibration = self.mocae.calibration
        return {
            "schema": TRACE_SCHEMA,
            "prompt": self.prompt,
            "model": self.model_name,
            "settings": {
                "generation": self.generation.to_dict(),
                "routing": self.routing.to_dict(),
                "calibration": calibration.enabled() if (calibration is not None and self.routing.calibrated) else None,
            },
            "axes": list(self.mocae.axes),
            "convention": CONVENTION,
            "notices": list(self.notices),
            "finish_reason": self.finish_reason,
            "text": self.text,
            "run_weights": self.run_weights(),
            "tokens": [asdict(t) for t in self.tokens],
        }


def _as_list(value: Any) -> list[int]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [int(value)]
