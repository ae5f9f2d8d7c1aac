"""The bundled demo model: present, loadable in 4-bit and full precision, and it generates."""

from __future__ import annotations

import json

import pytest

from alignx_demo.config import GenerationSettings, RoutingSettings
from alignx_demo.generation import RoutedGeneration
from alignx_demo.modeling import load_mocae
from alignx_demo.serving import DEFAULT_MODEL


def test_bundle_is_complete_and_small():
    files = [p for p in DEFAULT_MODEL.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 60 * 1024 * 1024
    names = {str(p.relative_to(DEFAULT_MODEL)) for p in files}
    for required in ("mocae_config.json", "router.safetensors", "calibration.safetensors", "MODEL_CARD.md",
                     "base/model.safetensors", "experts/helpful/adapter_model.safetensors",
                     "baselines/joint_sft/adapter_model.safetensors", "baselines/sequential_sft/adapter_model.safetensors",
                     "baselines/uniform_merge/adapter_model.safetensors"):
        assert required in names, required
    assert json.loads((DEFAULT_MODEL / "mocae_config.json").read_text())["base_model_type"] == "bert"


@pytest.mark.slow
def test_demo_model_generates_with_routing_both_ways():
    loaded = load_mocae(DEFAULT_MODEL, load_in_4bit=True)
    assert loaded.mocae.calibration is not None and loaded.mocae.calibration.names == ["temperature", "natural", "fractal", "pooled"]
    traces = {}
    for calibrated in (True, False):
        run = RoutedGeneration(loaded.mocae, loaded.tokenizer, "Give three tips for staying healthy.",
                               GenerationSettings(max_new_tokens=12), RoutingSettings(calibrated=calibrated))
        tokens = [t for t in run if not t.is_prompt]
        assert tokens and run.text.strip()
        traces[calibrated] = run.trace()
    assert traces[True]["tokens"][0]["layers"] != traces[False]["tokens"][0]["layers"]


def test_model_card_has_measured_figures():
    """The card's sections; that each figure is computed from the logs and the report is `tests/test_release.py`'s."""
    card = (DEFAULT_MODEL / "MODEL_CARD.md").read_text(encoding="utf-8")
    for heading in ("## Base", "## As served", "## Evaluation", "## Targets", "## Data and licences", "## Samples",
                    "| mocae_full |", "| step | tokens | minutes | held-out helpful |", "| source | file | used for | licence"):
        assert heading in card, heading
    assert "linear layers of the base, every one but the output head `cls.predictions.decoder`." in card  # 4-bit NF4 everywhere it can be
    assert "None" not in card
    router = json.loads((DEFAULT_MODEL / "logs" / "router_summary.json").read_text(encoding="utf-8"))["config"]
    assert ("phrasing alone does not name the axis" in card) == bool(router.get("match_phrasing"))  # the card says how
    assert (f"{router.get('own_answers')} answered train prompts per axis" in card) == bool(router.get("own_answers"))
    calibration = json.loads((DEFAULT_MODEL / "logs" / "calibration_summary.json").read_text(encoding="utf-8"))
    assert f"token NLL {calibration['report']['select_token_nll']['uncalibrated']:.3f} uncalibrated" in card
