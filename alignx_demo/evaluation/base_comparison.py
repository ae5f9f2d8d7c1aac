"""Compare base models on the same measures, whatever their tokenizers: the warm-started base
against the from-scratch one (DESIGN.md section 5; issue: "compare it with the from-scratch recipe
at equal CPU time, on the same measures, and ship the winner").

Measures, each defined so that it does not depend on either model's tokenizer or features:
- **Bits per character** of held-out helpful answers (calibration split, whole answers): the
  answer tokens' next-token loss in bits, summed, over the answer's characters as written — on the
  answers every compared base's context holds, so each base is scored on the same text. Per-token
  loss is not comparable across vocabularies; this is. An uncased tokenizer predicts a lossy text
  (no case, newlines kept only where the tokenizer has a newline token), which flatters it by the
  information in the case of letters: the report says which bases are uncased.
- **On-topic rate** of greedy answers to helpful prompts: an answer is on topic when it shares a
  content word with the prompt (lowercased words of three or more letters, not a stop word, in the
  singular). Crude, and blind to meaning on purpose: it uses neither base. Every answer is stored
  in the report so a reader can check the measure against the text.
- **Routing read-out**: how well the base's own features tell the axes apart — a balanced logistic
  regression (scikit-learn) on the mean over the prompt's tokens of the last layer's hidden state,
  fitted on train-split prompts and scored on labelled sets the caller passes (the eval split,
  hand-written prompts, out-of-distribution sets). It bounds what routers on that base can learn
  from one layer's features; the routers themselves are measured by `evaluate` once trained.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from alignx_demo.data.behaviour import on_topic
from alignx_demo.data.templates import encode_example, encode_prompt, is_uncased


def context_of(model: Any) -> int:
    return int(getattr(model.config, "max_position_embeddings", 0) or 2048)


@torch.no_grad()
def answer_bits(model: Any, tokenizer: Any, pairs: Sequence[tuple[str, str]]) -> list[float | None]:
    """Per (prompt, answer) pair, the answer's bits (its tokens and end of sequence, each predicted
    once); None where the pair does not fit the model's context."""
    context = context_of(model)
    out: list[float | None] = []
    for prompt, answer in pairs:
        ids, start = encode_example(tokenizer, prompt, answer)
        if len(ids) > context or start >= len(ids) - 1:
            out.append(None)
            continue
        x = torch.tensor([ids], device=model.device)
        labels = x.clone()
        labels[0, :start] = -100
        out.append(float(model(input_ids=x, labels=labels).loss) * (len(ids) - start) / math.log(2))
    return out


def bits_per_character(bits: Sequence[float | None], pairs: Sequence[tuple[str, str]],
                       keep: Sequence[bool] | None = None) -> dict[str, float]:
    """Answer bits over answer characters, over the pairs measured (and kept: e.g. those every base fits)."""
    used = [(b, len(a)) for b, (_, a), k in zip(bits, pairs, keep or [True] * len(pairs)) if b is not None and k]
    return {"bits_per_char": sum(b for b, _ in used) / max(sum(c for _, c in used), 1), "answers": len(used),
            "left_out": len(pairs) - len(used)}


@torch.no_grad()
def greedy_answers(model: Any, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int = 48) -> list[str]:
    """Greedy answers (the same decoding for every base, prompts cut from the left to leave room),
    decoded without special tokens."""
    out, keep = [], max(context_of(model) - max_new_tokens, 1)
    for prompt in prompts:
        ids = torch.tensor([encode_prompt(tokenizer, prompt)[-keep:]], device=model.device)
        gen = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id)
        out.append(tokenizer.decode(gen[0, ids.shape[1]:], skip_special_tokens=True).strip())
    return out


@torch.no_grad()
def prompt_features(model: Any, tokenizer: Any, prompts: Sequence[str]) -> torch.Tensor:
    """(N, D): the last layer's hidden state averaged over each prompt's tokens (causal, as routers see it)."""
    context = context_of(model)
    rows = []
    for prompt in prompts:
        ids = encode_prompt(tokenizer, prompt)[-context:]
        hidden = model(input_ids=torch.tensor([ids], device=model.device), output_hidden_states=True).hidden_states[-1]
        rows.append(hidden[0].float().mean(0).cpu())
    return torch.stack(rows)


@dataclass
class LabelledSet:
    """Prompts with axis labels, named for the report."""

    name: str
    prompts: list[str]
    axes: list[str]


def routing_readout(model: Any, tokenizer: Any, train: LabelledSet, tests: Sequence[LabelledSet]) -> dict[str, Any]:
    """Accuracy (overall and per axis) of a logistic regression on the base's prompt features."""
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415
    from sklearn.pipeline import make_pipeline  # noqa: PLC0415
    from sklearn.preprocessing import StandardScaler  # noqa: PLC0415

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced"))
    clf.fit(prompt_features(model, tokenizer, train.prompts).numpy(), train.axes)
    report: dict[str, Any] = {"train_prompts": len(train.prompts)}
    for test in tests:
        predicted = clf.predict(prompt_features(model, tokenizer, test.prompts).numpy())
        hits = [p == a for p, a in zip(predicted, test.axes)]
        per_axis = {a: round(sum(h for h, t in zip(hits, test.axes) if t == a) / test.axes.count(a), 3)
                    for a in sorted(set(test.axes))}
        report[test.name] = {"accuracy": round(sum(hits) / len(hits), 3), "per_axis": per_axis, "n": len(hits)}
    return report


def measure_base(model: Any, tokenizer: Any, heldout: Sequence[tuple[str, str]], helpful_prompts: Sequence[str],
                 train: LabelledSet, tests: Sequence[LabelledSet], max_new_tokens: int = 48) -> dict[str, Any]:
    """Every measure of one base, with its answers kept for reading."""
    answers = greedy_answers(model, tokenizer, helpful_prompts, max_new_tokens)
    topical = [on_topic(p, a) for p, a in zip(helpful_prompts, answers)]
    return {
        "params": sum(p.numel() for p in {id(p): p for p in model.parameters()}.values()),
        "model_type": model.config.model_type,
        "uncased": is_uncased(tokenizer),
        "answer_bits": answer_bits(model, tokenizer, heldout),
        "on_topic_rate": round(sum(topical) / max(len(topical), 1), 3),
        "answers": [{"prompt": p, "answer": a, "on_topic": t} for p, a, t in zip(helpful_prompts, answers, topical)],
        "routing_readout": routing_readout(model, tokenizer, train, tests),
    }


def base_record(folder: Path) -> dict[str, Any]:
    """Which base this is: a hash of its weights and what its training summary says of the run."""
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.safetensors")):
        digest.update(path.read_bytes())
    record: dict[str, Any] = {"path": str(folder), "weights_sha256": digest.hexdigest()[:16]}
    summary = folder / "train_summary.json"
    if summary.is_file():
        s = json.loads(summary.read_text())
        record |= {k: s.get(k) for k in ("steps", "tokens_seen", "train_seconds", "clock", "threads", "tokens_per_s")}
        record["init"] = s.get("config", {}).get("init", "scratch")
    return record


def comparison_sets(data_dir: str | Path, *, train_per_axis: int, eval_per_axis: int, heldout_answers: int,
                    extra: Sequence[LabelledSet] = ()) -> dict[str, Any]:
    """The shared inputs: held-out helpful answers, helpful prompts to answer, the read-out's train and test sets."""
    from alignx_demo.analysis.map_prompts import MAP_PROMPTS  # noqa: PLC0415
    from alignx_demo.config import AXES  # noqa: PLC0415
    from alignx_demo.data.readers import load_axis_data  # noqa: PLC0415
    from alignx_demo.data.records import eval_prompts  # noqa: PLC0415

    examples = load_axis_data(data_dir).examples
    heldout = [(e.prompt, e.response) for e in eval_prompts(examples, "helpful", split="calibration", mixed=True)
               if e.response][:heldout_answers]

    def labelled(name: str, split: str, per_axis: int) -> LabelledSet:
        rows = [(e.prompt, a) for a in AXES for e in eval_prompts(examples, a, limit=per_axis, split=split, mixed=True)]
        return LabelledSet(name, [p for p, _ in rows], [a for _, a in rows])

    written = LabelledSet("hand_written", [p for a in AXES for p in MAP_PROMPTS[a]], [a for a in AXES for _ in MAP_PROMPTS[a]])
    eval_split = labelled("eval_split", "eval", eval_per_axis)
    helpful = MAP_PROMPTS["helpful"] + [p for p, a in zip(eval_split.prompts, eval_split.axes) if a == "helpful"][:len(MAP_PROMPTS["helpful"])]
    return {"heldout": heldout, "helpful_prompts": helpful, "train": labelled("train", "train", train_per_axis),
            "tests": [eval_split, written, *extra]}


def compare_bases(bases: dict[str, Path], data_dir: str | Path, *, train_per_axis: int = 600, eval_per_axis: int = 160,
                  heldout_answers: int = 200, max_new_tokens: int = 48, extra: Sequence[LabelledSet] = (),
                  progress: bool = True) -> dict[str, Any]:
    """Measure every base on the same sets (full precision, CPU or the first GPU) and report side by side."""
    from tqdm.auto import tqdm  # noqa: PLC0415
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: PLC0415

    sets = comparison_sets(data_dir, train_per_axis=train_per_axis, eval_per_axis=eval_per_axis,
                           heldout_answers=heldout_answers, extra=extra)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    report: dict[str, Any] = {"definitions": __doc__, "bases": {}, "sets": {
        "heldout_answers": len(sets["heldout"]), "helpful_prompts": len(sets["helpful_prompts"]),
        "readout_train": len(sets["train"].prompts), **{t.name: len(t.prompts) for t in sets["tests"]}}}
    for name, folder in tqdm(bases.items(), desc="bases", disable=not progress):
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).to(device).eval()
        report["bases"][name] = base_record(Path(folder)) | measure_base(
            model, tokenizer, sets["heldout"], sets["helpful_prompts"], sets["train"], sets["tests"], max_new_tokens)
    every = [all(r["answer_bits"][i] is not None for r in report["bases"].values()) for i in range(len(sets["heldout"]))]
    for r in report["bases"].values():  # the same answers for every base: those all their contexts hold
        r["heldout"] = bits_per_character(r.pop("answer_bits"), sets["heldout"], every)
    return report
