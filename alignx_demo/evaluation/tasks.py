"""Evaluation as small declarative units, in the style of lm-evaluation-harness, and one runner.

A `Task` is a prompt set (which held-out items, drawn how), a sampler (how a model is run on them:
greedy answers, answer log-likelihoods, teacher-forced loss, routed forwards or generations), a
metric (outputs → numbers) and a version, bumped whenever any of the three changes meaning, so two
reports with the same task version measured the same thing. A task runs either once per compared
system (scope "system": its numbers go into that system's table row) or once on the MoCaE model
(scope "model": routing, trade-off presets). `run_tasks` runs any selection of tasks; a sampler's
outputs on a prompt set are computed once per system and shared by every task that reads them
(the harmful prompts' greedy answers feed the refusal rate and the safety judge alike).

Prompts are never truncated: an item whose chat prompt leaves less room than its sampler needs
(`Sampler.room`: new tokens for generation, one answer token for log-likelihoods) is left out of
the set before the set is cut to size, and the count is reported (`excluded_too_long`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from tqdm.auto import tqdm

from alignx_demo.data.records import AxisExample, stable_rank
from alignx_demo.data.templates import encode_prompt


@dataclass
class EvalConfig:
    """How many items each measurement uses, and the decoding lengths (quick: a handful, for tests).

    Attributes:
        loss_per_axis: eval-split examples with a reference answer per axis (held-out loss).
        routing_per_axis: distinct eval-split prompts per axis (routing at token and prompt level).
        shifted: XSTest prompts (train and eval splits, stratified over its types) for routing under shift.
        generation_per_axis: prompts per axis (and, ×3, XSTest prompts) whose greedy answers give
            generation-level routing.
        refusal_prompts: harmful prompts and XSTest safe prompts, each.
        mc_questions: TruthfulQA eval questions (MC1/MC2, "no comment" rate).
        alpaca_prompts: AlpacaEval eval prompts (helpfulness proxy or judge).
        new_tokens: greedy answer length of the per-system generations.
        tokens_per_example: None = every prompt token after the template prefix (token and prompt
            level mean what they say); a number samples that many evenly spaced tokens per prompt.
        max_len: window of every forward (prompt + answer), capped by the model's context.
        preset_prompts: prompts per preset group (harmful, benign, honesty, helpful).
        preset_new_tokens: greedy answer length of the preset generations.
        separability_per_axis: train-split prompts per axis the reference classifiers are fitted on
            (`separability`).
        ood_per_slice: prompts per out-of-distribution slice (`data.ood`) routed at prompt level
            (`routing_ood`).
        ood_generation_per_slice: the first prompts of each slice whose greedy answers
            (`new_tokens`) give generation-level routing (`routing_ood`).
        ood_preset_prompts: MT-Bench and held-out harmful prompts, each, answered under every preset
            (`presets_ood`; `preset_new_tokens`).
    """

    loss_per_axis: int = 80
    routing_per_axis: int = 200
    shifted: int = 450
    generation_per_axis: int = 32
    refusal_prompts: int = 48
    mc_questions: int = 60
    alpaca_prompts: int = 48
    new_tokens: int = 32
    tokens_per_example: int | None = None
    max_len: int = 256
    preset_prompts: int = 48
    preset_new_tokens: int = 48
    separability_per_axis: int = 1500
    ood_per_slice: int = 80
    ood_generation_per_slice: int = 32
    ood_preset_prompts: int = 48

    @classmethod
    def quick_recipe(cls) -> EvalConfig:
        return cls(loss_per_axis=6, routing_per_axis=8, shifted=12, generation_per_axis=1, refusal_prompts=6, mc_questions=4,
                   alpaca_prompts=4, new_tokens=8, max_len=128, preset_prompts=2, preset_new_tokens=8,
                   separability_per_axis=12, ood_per_slice=4, ood_generation_per_slice=1, ood_preset_prompts=2)


@dataclass
class Context:
    """What tasks read: settings, the loaded model, the data and the optional judges."""

    cfg: EvalConfig
    tokenizer: Any
    mocae: Any
    examples: list[AxisExample] = field(default_factory=list)
    eval_sets: dict[str, list[AxisExample]] = field(default_factory=dict)
    judge: Any = None
    safety_judge: Any = None
    ood: dict[str, list[AxisExample]] = field(default_factory=dict)
    """The out-of-distribution slices (`data.ood.load_ood_slices`), when an OOD task runs."""
    max_len: int = 0
    """The window: `cfg.max_len`, or the model's context if shorter (set by `__post_init__`)."""

    def __post_init__(self) -> None:
        context = int(getattr(getattr(self.mocae, "model", self.mocae).config, "max_position_embeddings", 0) or self.cfg.max_len)
        self.max_len = self.max_len or min(self.cfg.max_len, context)


@dataclass(frozen=True)
class PromptSet:
    """Held-out items in the order they are drawn; the first `size` that fit the window are used
    (`size` per group when `group` names each item's group)."""

    name: str
    description: str
    candidates: Callable[[Context], list[AxisExample]]
    size: Callable[[EvalConfig], int]
    group: Callable[[AxisExample], str] | None = None


@dataclass(frozen=True)
class Sampler:
    """How a model is run on a prompt set: `run(ctx, model, items)` → outputs, one per item or aggregated."""

    name: str
    description: str
    run: Callable[[Context, Any, list[AxisExample]], Any]
    room: Callable[[EvalConfig], int] = lambda cfg: 1
    """Tokens the sampler needs after the prompt (generation: the new tokens; scoring: one)."""


@dataclass(frozen=True)
class Task:
    """One measurement: prompt set + sampler + metric, at a version."""

    name: str
    version: int
    prompts: PromptSet
    sampler: Sampler
    metric: Callable[[Context, list[AxisExample], Any], dict[str, Any]]
    scope: Literal["system", "model"] = "system"
    requires: Literal["judge", "safety_judge"] | None = None
    """Run only when this judge was given."""
    description: str = ""


def stratified(items: Iterable[AxisExample], key: Callable[[AxisExample], str]) -> list[AxisExample]:
    """All items, ordered so that any prefix spreads evenly over the strata given by `key`:
    round-robin over the strata (sorted by name), each stratum in a fixed pseudo-random order
    (`stable_rank` of the item id)."""
    groups: dict[str, list[AxisExample]] = {}
    for item in sorted(items, key=lambda e: stable_rank(e.id)):
        groups.setdefault(key(item), []).append(item)
    columns = [groups[k] for k in sorted(groups)]
    return [column[i] for i in range(max(map(len, columns), default=0)) for column in columns if i < len(column)]


def prompt_hash(items: Sequence[AxisExample]) -> str:
    """A short hash of the items used (ids and prompts), so reports show when two sets differ."""
    digest = hashlib.sha256()
    for item in items:
        digest.update(f"{item.id}\t{item.prompt}\n".encode())
    return digest.hexdigest()[:16]


def draw(ctx: Context, prompts: PromptSet, room: int) -> tuple[list[AxisExample], int]:
    """The first `size` candidates (per group, if the set has groups) whose chat prompt leaves
    `room` tokens in the window, and how many were passed over for being too long."""
    size, kept, excluded = prompts.size(ctx.cfg), [], 0
    taken: dict[str, int] = {}
    for item in prompts.candidates(ctx):
        group = prompts.group(item) if prompts.group else ""
        if taken.get(group, 0) >= size:
            continue
        if len(encode_prompt(ctx.tokenizer, item.prompt)) + room <= ctx.max_len:
            kept.append(item)
            taken[group] = taken.get(group, 0) + 1
        else:
            excluded += 1
    return kept, excluded


@dataclass
class TaskRun:
    """What `run_tasks` returns: per-system table rows, model-level results, task records and the
    sampler outputs (keyed by (system, sampler, prompt set)), for samples."""

    rows: dict[str, dict[str, Any]]
    model: dict[str, dict[str, Any]]
    tasks: dict[str, dict[str, Any]]
    outputs: dict[tuple[str, str, str], tuple[list[AxisExample], Any]]


def task_record(task: Task, items: list[AxisExample], excluded: int) -> dict[str, Any]:
    return {
        "version": task.version, "scope": task.scope, "description": task.description,
        "prompt_set": task.prompts.name, "prompt_set_description": task.prompts.description,
        "sampler": task.sampler.name, "sampler_description": task.sampler.description,
        "n": len(items), "excluded_too_long": excluded, "prompt_sha256": prompt_hash(items),
    }


def runnable(tasks: Sequence[Task], ctx: Context) -> tuple[list[Task], dict[str, str]]:
    """The tasks whose required judge was given, and why each other one is skipped."""
    keep, skipped = [], {}
    for task in tasks:
        if task.requires is not None and getattr(ctx, task.requires) is None:
            skipped[task.name] = f"needs --{task.requires.replace('_', '-')}-model"
        else:
            keep.append(task)
    return keep, skipped


def run_tasks(tasks: Sequence[Task], systems: dict[str, Any], ctx: Context, *, progress: bool = True) -> TaskRun:
    """Run the system-scope tasks on every system (each activated first), then the model-scope tasks."""
    run = TaskRun({name: {} for name in systems}, {}, {}, {})
    drawn: dict[tuple[str, int], tuple[list[AxisExample], int]] = {}

    def items_of(task: Task) -> list[AxisExample]:
        key = (task.prompts.name, task.sampler.room(ctx.cfg))
        if key not in drawn:
            drawn[key] = draw(ctx, task.prompts, key[1])
        run.tasks[task.name] = task_record(task, *drawn[key])
        return drawn[key][0]

    def outputs_of(owner: str, model: Any, task: Task) -> Any:
        key = (owner, task.sampler.name, task.prompts.name)
        if key not in run.outputs:
            items = items_of(task)
            run.outputs[key] = (items, task.sampler.run(ctx, model, items))
        return run.outputs[key][1]

    per_system = [t for t in tasks if t.scope == "system"]
    for name, system in tqdm(systems.items(), desc="systems", disable=not progress or not per_system):
        if not per_system:
            break
        system.activate()
        for task in per_system:
            outputs = outputs_of(name, system, task)
            run.rows[name].update(task.metric(ctx, items_of(task), outputs))
    for task in tqdm([t for t in tasks if t.scope == "model"], desc="model tasks", disable=not progress):
        run.model[task.name] = task.metric(ctx, items_of(task), outputs_of("mocae", ctx.mocae, task))
    return run
