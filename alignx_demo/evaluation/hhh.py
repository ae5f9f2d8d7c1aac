"""The per-system HHH tasks of `evaluate` (prompt sets, samplers, metrics; see `tasks`).

Prompt sets (held-out items only):
- heldout responses: the first eval-split examples with a reference answer, per axis;
- harmful: eval-split prompts of the harmful evaluation sets (`HARMFUL_SETS`), stratified over the sets;
- XSTest safe: XSTest's safe prompts from its train and eval splits — never its calibration split,
  which helps fit the fractal calibrator — stratified over all its safe types;
- TruthfulQA: the MC questions of the eval split (split by question);
- AlpacaEval: eval-split prompts with their reference outputs.
Samplers: greedy answers (`EvalConfig.new_tokens`), teacher-forced loss of reference answers,
log-likelihoods of answers after the whole prompt (answers cut to fit, prompts never).
"""

from __future__ import annotations

from typing import Any

import torch

from alignx_demo.config import AXES, RoutingSettings
from alignx_demo.data.batches import encode_set, make_batch
from alignx_demo.data.records import AxisExample, eval_prompts
from alignx_demo.data.templates import encode_prompt
from alignx_demo.evaluation.benchmarks import abstention_rate, mc_report, mc_scores, proxy_report, rate, reference_scores
from alignx_demo.evaluation.refusal import is_refusal
from alignx_demo.evaluation.tasks import Context, PromptSet, Sampler, Task, stratified

HARMFUL_SETS = ("beavertails", "advbench", "stl_malicious", "stl_qharm", "stl_cona", "stl_physical_unsafe")
XSTEST_SPLITS = ("train", "eval")
"""XSTest is never trained on; its calibration split is used to fit the fractal calibrator, so
evaluation reads only these splits."""


def loss_examples(examples: list[AxisExample], per_axis: int) -> list[AxisExample]:
    """The first eval-split examples with a response, per axis (one question may have several answers)."""
    out = []
    for axis in AXES:
        out += [e for e in examples if e.axis == axis and e.split == "eval" and e.response][:per_axis]
    return out


def routing_examples(examples: list[AxisExample], per_axis: int) -> list[AxisExample]:
    """Distinct eval-split prompts per axis, mixed over the axis's sources (`eval_prompts(mixed=True)`):
    routing is measured once per prompt."""
    return [e for axis in AXES for e in eval_prompts(examples, axis, per_axis, mixed=True)]


def xstest_safe(xstest: list[AxisExample]) -> list[AxisExample]:
    """XSTest's safe prompts outside its calibration split, stratified over its types."""
    return stratified([e for e in xstest if e.meta.get("label") == "safe" and e.split in XSTEST_SPLITS],
                      key=lambda e: e.meta.get("type", ""))


def harmful_prompts(eval_sets: dict[str, list[AxisExample]]) -> list[AxisExample]:
    """Eval-split prompts of the harmful evaluation sets, stratified over the sets."""
    return stratified([e for name in HARMFUL_SETS for e in eval_sets[name] if e.split == "eval"], key=lambda e: e.source)


@torch.no_grad()
def heldout_loss(mocae: Any, tokenizer: Any, examples: list[AxisExample], routing: RoutingSettings, max_len: int) -> dict[str, float]:
    """Mean response-token LM loss per axis under the given routing (answers cut to fit, prompts never)."""
    device = next(mocae.model.parameters()).device
    data = encode_set(tokenizer, examples, max_len)
    sums = {a: [0.0, 0] for a in AXES}
    for i in range(len(data)):
        batch = make_batch(data, [i], tokenizer.pad_token_id)
        span = batch["attention_mask"] - batch["response_mask"]  # the prompt: what routers summarise, with context_scope "prompt"
        with mocae.routed(routing), mocae.prompt_span(span.to(device)):
            out = mocae(input_ids=batch["input_ids"].to(device), labels=batch["labels"].to(device))
        n = int((batch["labels"][:, 1:] != -100).sum())
        axis = AXES[data.axes[i]]
        sums[axis][0] += float(out.loss) * n
        sums[axis][1] += n
    return {a: s / n for a, (s, n) in sums.items() if n}


@torch.no_grad()
def greedy_answers(mocae: Any, tokenizer: Any, prompts: list[str], routing: RoutingSettings, new_tokens: int) -> list[str]:
    """Greedy answers, batched with left padding (routing is per token; pads are masked). Prompts
    are used whole: the prompt sets leave out prompts that do not fit."""
    device = next(mocae.model.parameters()).device
    answers: list[str] = []
    for start in range(0, len(prompts), 8):
        encoded = [encode_prompt(tokenizer, p) for p in prompts[start : start + 8]]
        width = max(len(e) for e in encoded)
        ids = torch.full((len(encoded), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, e in enumerate(encoded):
            ids[row, width - len(e):] = torch.tensor(e)
            mask[row, width - len(e):] = 1
        with mocae.routed(routing):
            out = mocae.generate(
                input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=new_tokens, do_sample=False,
                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            )
        answers += tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    return answers


# prompt sets --------------------------------------------------------------------------------

HELDOUT = PromptSet("heldout_responses", "first eval-split examples with a reference answer, per axis",
                    lambda ctx: loss_examples(ctx.examples, ctx.cfg.loss_per_axis), lambda cfg: 3 * cfg.loss_per_axis)
HARMFUL = PromptSet("harmful", f"eval-split prompts of {', '.join(HARMFUL_SETS)}, stratified over the sets",
                    lambda ctx: harmful_prompts(ctx.eval_sets), lambda cfg: cfg.refusal_prompts)
XSTEST_SAFE = PromptSet("xstest_safe", "XSTest safe prompts (train + eval splits, never calibration), stratified over its types",
                        lambda ctx: xstest_safe(ctx.eval_sets["xstest"]), lambda cfg: cfg.refusal_prompts)
TRUTHFULQA = PromptSet("truthfulqa_mc", "TruthfulQA MC questions of the eval split, file order",
                       lambda ctx: [q for q in ctx.eval_sets["truthfulqa_mc"] if q.split == "eval"], lambda cfg: cfg.mc_questions)
ALPACAEVAL = PromptSet("alpacaeval", "AlpacaEval prompts of the eval split with their reference outputs, file order",
                       lambda ctx: [e for e in ctx.eval_sets["alpacaeval"] if e.split == "eval"], lambda cfg: cfg.alpaca_prompts)

# samplers ---------------------------------------------------------------------------------

GREEDY = Sampler("greedy", "greedy decoding of EvalConfig.new_tokens tokens, batched with left padding",
                 lambda ctx, system, items: greedy_answers(system.model, ctx.tokenizer, [i.prompt for i in items], system.routing,
                                                           ctx.cfg.new_tokens),
                 room=lambda cfg: cfg.new_tokens)
LOSS = Sampler("teacher_forced_loss", "mean LM loss of the reference answer's tokens per axis (answer cut to fit)",
               lambda ctx, system, items: heldout_loss(system.model, ctx.tokenizer, items, system.routing, ctx.max_len),
               room=lambda cfg: 2)
MC_LOGLIK = Sampler("mc_loglik", "summed log-likelihood of each distinct MC1/MC2 answer after the prompt, each scored once",
                    lambda ctx, system, items: [mc_scores(system, ctx.tokenizer, q, ctx.max_len) for q in items])
REF_LOGLIK = Sampler("reference_loglik", "log-likelihood of the GPT-4-1106 and Alpaca-7B references after the prompt",
                     lambda ctx, system, items: [reference_scores(system, ctx.tokenizer, i, ctx.max_len) for i in items])


# metrics ----------------------------------------------------------------------------------

def _refusal(ctx: Context, items: list[AxisExample], answers: list[str]) -> dict[str, Any]:
    refusals = [float(is_refusal(a)) for a in answers]
    return {"harmful_refusal_rate": rate(refusals), "unsafe_rate": rate([1.0 - r for r in refusals])}


def _win_rate(ctx: Context, items: list[AxisExample], answers: list[str]) -> dict[str, Any]:
    before = ctx.judge.truncated
    wins = [ctx.judge.win(i.prompt, a, i.meta["references"]["gpt4_1106_preview"]) for i, a in zip(items, answers)]
    return {"win_rate": rate(wins), "judge_calls_truncated": ctx.judge.truncated - before}


HHH_TASKS: tuple[Task, ...] = (
    Task("heldout_loss", 1, HELDOUT, LOSS, lambda ctx, items, out: {"heldout_loss": out},
         description="held-out LM loss per axis (response tokens)"),
    Task("harmful_refusal", 2, HARMFUL, GREEDY, _refusal, description="refusal rate on harmful prompts; unsafe rate = 1 − it"),
    Task("safety_judge", 2, HARMFUL, GREEDY,
         lambda ctx, items, out: {"judge_unsafe_rate": ctx.safety_judge.unsafe_rate([i.prompt for i in items], out)},
         requires="safety_judge", description="unsafe rate of the answers to harmful prompts, by the safety judge"),
    Task("xstest_over_refusal", 2, XSTEST_SAFE, GREEDY,
         lambda ctx, items, out: {"xstest_safe_over_refusal": rate([float(is_refusal(a)) for a in out])},
         description="refusal rate on XSTest's safe prompts (over-refusal)"),
    Task("no_comment", 2, TRUTHFULQA, GREEDY, lambda ctx, items, out: {"no_comment_rate": abstention_rate(out)},
         description='"no comment" / hedge rate of greedy answers to TruthfulQA questions'),
    Task("truthfulqa_mc", 2, TRUTHFULQA, MC_LOGLIK, lambda ctx, items, out: mc_report(items, out),
         description="TruthfulQA MC1 and MC2 by log-likelihood"),
    Task("helpfulness_proxy", 2, ALPACAEVAL, REF_LOGLIK, lambda ctx, items, out: proxy_report(out),
         description="PROXY: strong reference likelier per token than the weak one"),
    Task("win_rate", 2, ALPACAEVAL, GREEDY, _win_rate, requires="judge",
         description="AlpacaEval win rate against GPT-4-1106 by the local judge"),
)
