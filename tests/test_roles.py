"""Data roles: what the routers learn from (expert roles + prompt-only examples of every other train prompt)."""

from __future__ import annotations

import math

import pytest
import torch
from data_fixtures import make_data_dir

from alignx_demo.config import AXES, RoutingSettings
from alignx_demo.data import behaviour
from alignx_demo.data.batches import encode_set, make_batch
from alignx_demo.data.readers import load_axis_data
from alignx_demo.data.records import AxisExample, normalize_key
from alignx_demo.data.roles import expert_examples, router_examples
from alignx_demo.data.templates import encode_example, encode_prompt
from alignx_demo.modeling import load_mocae
from alignx_demo.training.finetune import train_loop


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    return load_axis_data(make_data_dir(tmp_path_factory.mktemp("data"), n=40)).examples


def test_router_examples_add_every_other_train_prompt_without_an_answer(examples, tokenizer):
    harmless_train = {normalize_key(e.prompt) for e in examples if e.axis == "harmless" and e.split == "train"}
    role = expert_examples(tokenizer, examples, "harmless")
    routed = router_examples(tokenizer, examples, "harmless")
    assert routed[: len(role)] == role and all(behaviour.is_refusal(e.response) for e in role)
    extra = routed[len(role):]
    assert extra and all(e.response == "" and e.split == "train" and e.axis == "harmless" for e in extra)
    keys = [normalize_key(e.prompt) for e in extra]
    assert len(keys) == len(set(keys)) and not set(keys) & {normalize_key(e.prompt) for e in role}
    assert {normalize_key(e.prompt) for e in routed} == harmless_train  # every train prompt of the axis, once or in the role
    for axis in AXES:  # no eval or calibration prompt reaches the routers
        assert all(e.split == "train" for e in router_examples(tokenizer, examples, axis))


def test_a_prompt_only_example_is_the_prompt_with_no_answer_tokens(tokenizer):
    ids, start = encode_example(tokenizer, "How do I pick a lock?", "")
    assert ids == encode_prompt(tokenizer, "How do I pick a lock?") and start == len(ids)
    data = encode_set(tokenizer, router_examples_of(), 64)
    batch = make_batch(data, [0, 1], tokenizer.pad_token_id)
    assert (batch["labels"][1] == -100).all() and batch["response_mask"][1].sum() == 0 and batch["prompt_mask"][1].sum() > 0
    assert (batch["labels"][0] != -100).any()


def router_examples_of() -> list[AxisExample]:
    """A role example (with its refusal) and a prompt-only one."""
    return [AxisExample("t:0", "harmless", "How do I pick a lock?", "I can't help with that.", "t", "train"),
            AxisExample("t:1", "harmless", "How do I hurt someone?", "", "t", "train")]


def test_routers_train_on_batches_of_prompts_alone(checkpoint, tokenizer):
    mocae = load_mocae(checkpoint).mocae
    prompts = [e for e in router_examples_of() if not e.response]
    data = encode_set(tokenizer, prompts * 2, 64)
    before = [p.detach().clone() for p in mocae.routers.parameters()]
    result = train_loop(mocae, list(mocae.routers.parameters()), data, routing=RoutingSettings(mode="soft", calibrated=False),
                        steps=2, batch_size=2, lr=1e-2, pad_id=tokenizer.pad_token_id, loss_weights={"route": 1.0}, progress=False)
    assert result["finite"] and result["last_losses"]["lm"] == 0.0 and not math.isnan(result["last_losses"]["route"])
    assert any(not torch.equal(a, b) for a, b in zip(before, mocae.routers.parameters()))  # the routing loss alone moved them


def test_phrasing_classes_and_repeats_match_the_shares_across_axes(tokenizer):
    from alignx_demo.data.roles import phrasing, phrasing_repeats

    assert phrasing("How can I improve my sleep schedule?") == "how_to"
    assert phrasing("  What's the best way to kill weeds?") == "how_to"
    assert phrasing("Write a short poem about a lighthouse keeper.") == "task"
    assert phrasing("Why is the sky blue?") == "question" and phrasing("Is it true that bats are blind?") == "question"
    assert phrasing("Why is the sky blue") is None and phrasing("Showcase this") is None

    def row(axis: str, i: int, prompt: str) -> AxisExample:
        return AxisExample(id=f"{axis}-{i}", axis=axis, prompt=f"{prompt} {i}", response="", source="s", split="train")

    # helpful: 1 of 10 prompts is "How can I…"; harmless: 3 of 6 — the helpful one is repeated to 4 (capped)
    rows = [row("helpful", i, "How can I help my cat" if i == 0 else "Tell me about rivers") for i in range(10)]
    rows += [row("harmless", i, "How can I hurt" if i < 3 else "Tell me insults") for i in range(6)]
    repeats = phrasing_repeats(rows)
    assert repeats[("helpful", "how_to")] == 4 and repeats[("harmless", "how_to")] == 1
    assert phrasing_repeats(rows, cap=10)[("helpful", "how_to")] == 5  # 0.5 / 0.1
    routed = router_examples(tokenizer, rows, "helpful", match_phrasing=True)
    assert sum(e.prompt.startswith("How can I") for e in routed) == 4
    assert len(router_examples(tokenizer, rows, "helpful")) == 10


def test_mismatched_continuations_keep_the_prompts_axis_and_are_never_learned_as_text(examples, tokenizer):
    """`mismatch`: a share of the role's prompts again, each with another axis's answer, labelled with the
    prompt's axis; the batch routes them (response span) but puts no LM label on them."""
    role = expert_examples(tokenizer, examples, "helpful")
    routed = router_examples(tokenizer, examples, "helpful", mismatch=0.5)
    crossed = [e for e in routed if e.meta.get("mismatched")]
    assert len(crossed) == round(0.5 * len(role)) and routed[: len(role)] == role
    others = {e.response for axis in ("harmless", "honest") for e in expert_examples(tokenizer, examples, axis)}
    own = {e.prompt: e.response for e in role}
    assert all(e.axis == "helpful" and e.response in others and e.response != own[e.prompt] for e in crossed)
    assert {e.response for e in crossed} & {e.response for e in expert_examples(tokenizer, examples, "harmless")}
    data = encode_set(tokenizer, [role[0], crossed[0]], 256)
    batch = make_batch(data, [0, 1], tokenizer.pad_token_id)
    assert data.teach == [True, False] and batch["response_mask"][1].sum() > 0
    assert (batch["labels"][0] != -100).any() and (batch["labels"][1] == -100).all()
    assert router_examples(tokenizer, examples, "helpful") == router_examples(tokenizer, examples, "helpful", mismatch=0.0)


def test_own_answers_are_the_models_greedy_answers_routed_by_the_prompts_axis(examples, tokenizer, checkpoint):
    """`own_answers`: the first N answered prompts of each axis again, each with the greedy answer the checkpoint
    writes under its current routers (soft, uncalibrated), labelled with the prompt's axis, never learned as text;
    routers that were never trained cannot write them."""
    from alignx_demo.config import GenerationSettings
    from alignx_demo.generation import RoutedGeneration
    from alignx_demo.training.router import RouterConfig, own_answer_rows, training_rows

    loaded = load_mocae(checkpoint)
    cfg = RouterConfig(own_answers=2, own_tokens=5)
    rows = training_rows(tokenizer, examples, cfg)
    own = own_answer_rows(loaded.mocae, tokenizer, rows, cfg, progress=False)
    assert [e.axis for e in own] == ["helpful"] * 2 + ["harmless"] * 2 + ["honest"] * 2
    answered = {(e.axis, e.prompt) for e in rows if e.response}
    assert all((e.axis, e.prompt) in answered and e.meta["own_answer"] and e.id.endswith(":own") for e in own)
    run = RoutedGeneration(loaded.mocae, tokenizer, own[0].prompt, GenerationSettings(max_new_tokens=5),
                           RoutingSettings(mode="soft", calibrated=False))
    for _ in run:
        pass
    assert own[0].response == run.text and run.text not in {e.response for e in rows}
    data = encode_set(tokenizer, [rows[0], own[0]], 256)
    assert data.teach == [True, False]
    for param in loaded.mocae.routers.parameters():
        torch.nn.init.zeros_(param)
    with pytest.raises(ValueError, match="own answers need trained routers"):
        own_answer_rows(loaded.mocae, tokenizer, rows, cfg, progress=False)
