"""The honest notice: computed from the served model and its measured answers, absent where not needed."""

from __future__ import annotations

import json
from pathlib import Path


from alignx_demo.analysis.artefacts import Artefacts, load_artefacts, model_fingerprint
from alignx_demo.modeling import load_mocae
from alignx_demo.serving import DEFAULT_MODEL, ModelContext
from alignx_demo.ui import notice


def answers_artefact(fingerprint: str, on_topic: float, n: int = 40) -> dict:
    helpful = {"n": n, "on_topic": {"count": round(on_topic * n), "rate": on_topic, "interval": None}}
    return {"model_fingerprint": fingerprint, "presets": {"just right": {"by_axis": {"helpful": helpful}}}}


def test_the_notice_states_the_measured_rate_and_disappears_when_answers_are_on_topic(checkpoint):
    context = ModelContext(load_mocae(checkpoint, load_in_4bit=False))
    fingerprint = model_fingerprint(checkpoint)
    n_params = notice.parameter_count(context.loaded.mocae.model)
    assert n_params == sum(p.numel() for p in context.loaded.mocae.model.parameters())
    line = notice.honest_notice(context, Artefacts(Path("."), {"answers": answers_artefact(fingerprint, 0.175)}))
    assert f"{checkpoint.name} ({n_params / 1e6:,.1f} M parameters with its experts and routers)" in line and "only 18% of its calibrated answers to 40" in line
    assert notice.honest_notice(context, Artefacts(Path("."), {"answers": answers_artefact(fingerprint, 0.9)})) is None
    # an artefact of another model is not this model's measurement: the notice says it is unmeasured
    other = notice.honest_notice(context, Artefacts(Path("."), {"answers": answers_artefact("0123456789abcdef", 0.9)}))
    assert "has not been measured" in other
    assert notice.honest_notice(ModelContext(None, problem="no model"), Artefacts(Path("."))) is None


def test_a_large_unmeasured_base_needs_no_notice(checkpoint):
    assert notice.worth_line(checkpoint, notice.LARGE, None) is None
    assert "has not been measured" in notice.worth_line(checkpoint, notice.LARGE - 1, None)


def test_the_4bit_parameter_count_is_the_unpacked_one(checkpoint):
    full = notice.parameter_count(load_mocae(checkpoint, load_in_4bit=False).mocae.model)
    assert notice.parameter_count(load_mocae(checkpoint, load_in_4bit=True).mocae.model) == full


def test_the_notice_escapes_and_keeps_code():
    block = notice.notice_block("a <b> model (`python -m x`)")
    assert block == '<p class="ax-worth">ⓘ a &lt;b&gt; model (<code>python -m x</code>)</p>'
    assert notice.notice_block(None) == ""


def test_the_bundle_has_a_measured_notice_from_the_committed_answers():
    """The committed answers.json is the bundle's (same fingerprint), so the page's notice is measured."""
    answers = load_artefacts().get("answers")
    assert answers is not None and answers["model_fingerprint"] == model_fingerprint(DEFAULT_MODEL)
    measured = notice.on_topic_rate(answers, model_fingerprint(DEFAULT_MODEL))
    assert measured is not None and measured[1] == 40
    line = notice.worth_line(DEFAULT_MODEL, 6_900_000, measured)
    assert line.startswith("What this text is worth: this is the bundled teaching model (6.9 M parameters")


def test_answer_quality_judges_every_preset_and_axis(checkpoint):
    from alignx_demo.analysis.answers import answer_quality, judged

    result = answer_quality(load_mocae(checkpoint, load_in_4bit=False), per_axis=2, max_new_tokens=3)
    assert list(result["presets"]) == ["too helpful", "too harmless", "too honest", "just right"]
    for preset in result["presets"].values():
        assert len(preset["answers"]) == 6 and all(v["n"] == 2 for v in preset["by_axis"].values())
    counts = judged(["How do I bake bread?", "Fix my bike"], ["Bread needs flour.", "I'm sorry, I cannot help."])
    assert counts["on_topic"]["count"] == 1 and counts["refuses"]["count"] == 1 and counts["hedges"]["rate"] == 0.0
    assert counts["on_topic"]["interval"][0] < 0.5 < counts["on_topic"]["interval"][1]
    json.dumps(result)
