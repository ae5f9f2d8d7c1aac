"""Bring your own experts: three PEFT LoRA adapters of one base become a MoCaE checkpoint, on every
supported family; ranks may differ (zero padding keeps each delta exact); mismatches are refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import FAMILIES, VOCAB, tiny_config

from alignx_demo.config import AXES, RoutingSettings
from alignx_demo.modeling import AdapterError, load_mocae
from alignx_demo.modeling.adapters import import_adapters
from alignx_demo.modeling.families import MLP_TARGETS, peft_target_modules
from alignx_demo.training.commands import parse_experts

REPO = Path(__file__).resolve().parent.parent
IDS = torch.randint(3, VOCAB, (2, 8), generator=torch.Generator().manual_seed(11))
RANKS = {"helpful": dict(r=4, lora_alpha=8), "harmless": dict(r=8, lora_alpha=32), "honest": dict(r=2, lora_alpha=4, use_rslora=True)}
"""Different ranks, alphas and scaling rules per adapter."""


def family_model(family: str, config=None):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config or tiny_config(family)).eval()


def make_adapter(folder: Path, family: str, seed: int, config=None, **lora) -> Path:
    """A PEFT LoRA adapter with non-zero A and B, saved as PEFT saves it."""
    from peft import LoraConfig, get_peft_model

    lora = {"target_modules": peft_target_modules(family, MLP_TARGETS[family]), "lora_dropout": 0.0} | lora
    model = get_peft_model(family_model(family, config), LoraConfig(task_type="CAUSAL_LM", **lora))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    model.save_pretrained(str(folder), save_embedding_layers=False)
    return folder


def make_base(folder: Path, family: str, tokenizer) -> Path:
    model = family_model(family)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def make_set(root: Path, family: str, tokenizer) -> tuple[Path, dict[str, Path]]:
    base = make_base(root / "base", family, tokenizer)
    adapters = {axis: make_adapter(root / axis, family, seed=k + 1, **RANKS[axis]) for k, axis in enumerate(AXES)}
    return base, adapters


def forced_logits(mocae, k: int) -> torch.Tensor:
    prior = tuple(1.0 if j == k else 0.0 for j in range(3))
    with torch.no_grad(), mocae.routed(RoutingSettings(axis_prior=prior)):
        return mocae(input_ids=IDS).logits


@pytest.mark.parametrize("family", FAMILIES)
def test_one_hot_routing_equals_each_adapter_alone(family, tmp_path, tokenizer):
    from peft import PeftModel

    base, adapters = make_set(tmp_path, family, tokenizer)
    summary = import_adapters(tmp_path / "moe", base, adapters)
    assert summary["rank"] == 8 and {a: e["ranks"] for a, e in summary["experts"].items()} == {"helpful": [4], "harmless": [8], "honest": [2]}
    loaded = load_mocae(tmp_path / "moe", load_in_4bit=False, allow_untrained=True)  # forced routing: routers unused
    assert loaded.mocae.config.base_model == str(base.resolve()) and not (tmp_path / "moe" / "base").exists()
    plain = family_model(family)
    with torch.no_grad():
        base_logits = plain(input_ids=IDS).logits
    for k, axis in enumerate(AXES):
        ours = forced_logits(loaded.mocae, k)
        theirs = PeftModel.from_pretrained(family_model(family), str(adapters[axis])).eval()
        with torch.no_grad():
            want = theirs(input_ids=IDS).logits
        torch.testing.assert_close(ours, want, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(ours, base_logits, atol=1e-3), f"{axis} expert had no effect"
    # the written experts are standard PEFT adapters too: loading one alone gives the same model
    again = PeftModel.from_pretrained(family_model(family), str(tmp_path / "moe" / "experts" / "honest")).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=IDS).logits, forced_logits(loaded.mocae, 2), rtol=1e-4, atol=1e-5)


def test_phi3_and_qwen3_are_supported_families():
    from alignx_demo.modeling import MoCaEModel

    for family in ("phi3", "qwen3"):
        mocae = MoCaEModel(family_model(family))
        assert mocae.expert_modules and mocae.n_layers == 2
        with torch.no_grad(), mocae.routed(RoutingSettings()):
            torch.testing.assert_close(mocae(input_ids=IDS).logits, family_model(family)(input_ids=IDS).logits)


def test_parse_experts_keeps_your_names_in_order_and_says_what_is_wrong():
    assert parse_experts("helpful=a, harmless=b,honest=c") == {"helpful": "a", "harmless": "b", "honest": "c"}
    assert list(parse_experts("formal=x,casual=y")) == ["formal", "casual"]
    assert list(parse_experts("z=1,b-2=2,c_3=3,d=4,e=5,f=6")) == ["z", "b-2", "c_3", "d", "e", "f"]
    for text, message in [("formal=a", "needs 2 to 6 axes, got 1"), (",".join(f"a{i}=d" for i in range(7)), "got 7"),
                          ("Formal=a,casual=b", "axis name 'Formal'"), ("helpful=a,helpful=b", "names helpful twice"),
                          ("helpful", "NAME=DIR pairs"), ("1x=a,b=c", "starting with a letter")]:
        with pytest.raises(ValueError, match=message) as err:
            parse_experts(text)
        assert "\n" not in str(err.value)


def test_mismatched_adapters_are_refused_in_one_sentence(tmp_path, tokenizer):
    base, adapters = make_set(tmp_path, "llama", tokenizer)

    def refused(message: str, **swap) -> None:
        with pytest.raises(AdapterError, match=message) as err:
            import_adapters(tmp_path / "moe", base, adapters | swap)
        assert "\n" not in str(err.value) and str(err.value).count(". ") == 0

    wider = tiny_config("llama")
    wider.intermediate_size = 96
    refused("made for a different base", honest=make_adapter(tmp_path / "wide", "llama", 9, config=wider, r=2))
    refused("target different modules", harmless=make_adapter(tmp_path / "attn", "llama", 9, r=4, target_modules=["q_proj", "v_proj"]))
    refused("outside the decoder layers", helpful=make_adapter(tmp_path / "head", "llama", 9, r=4, target_modules=["lm_head"]))
    refused("uses DoRA", honest=make_adapter(tmp_path / "dora", "llama", 9, r=2, use_dora=True))
    other = make_adapter(tmp_path / "other", "llama", 9, r=2)
    config = json.loads((other / "adapter_config.json").read_text())
    (other / "adapter_config.json").write_text(json.dumps(config | {"base_model_name_or_path": "someone/else"}))
    first = json.loads((adapters["helpful"] / "adapter_config.json").read_text())
    (adapters["helpful"] / "adapter_config.json").write_text(json.dumps(first | {"base_model_name_or_path": "org/base"}))
    refused("trained on different bases: helpful on org/base, honest on someone/else", honest=other)
    with pytest.raises(AdapterError, match="needs 2 to 6 axes, got 1"):
        import_adapters(tmp_path / "moe", base, {"helpful": adapters["helpful"]})
    with pytest.raises(AdapterError, match="adapter folder not found"):
        import_adapters(tmp_path / "moe", base, adapters | {"honest": tmp_path / "nowhere"})


@pytest.mark.slow
def test_train_router_and_calibrate_on_your_own_experts(tmp_path, tokenizer):
    """The two commands of the README, end to end (quick recipe), and the CLI's one-line errors."""
    from data_fixtures import make_data_dir

    base, adapters = make_set(tmp_path, "llama", tokenizer)
    data = make_data_dir(tmp_path / "data", n=40)
    experts = ",".join(f"{axis}={adapters[axis]}" for axis in AXES)
    common = ["--quick", "--data-dir", str(data), "--out", str(tmp_path / "moe"), "--no-progress"]

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "alignx_demo", "train", *args], capture_output=True, text=True,
                              timeout=900, cwd=REPO)

    missing = cli("router", "--base-model", str(base), "--experts", f"helpful={adapters['helpful']}", *common)
    assert missing.returncode == 2 and "needs 2 to 6 axes, got 1" in missing.stderr and "Traceback" not in missing.stderr
    done = cli("router", "--base-model", str(base), "--experts", experts, *common)
    assert done.returncode == 0, done.stderr[-3000:]
    done = cli("calibrate", *common)  # no --base-model: the checkpoint records it
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = load_mocae(tmp_path / "moe", load_in_4bit=False)
    assert loaded.mocae.calibration is not None
    assert any(r.proj.weight.abs().sum() > 0 for r in loaded.mocae.routers)  # trained
    from peft import PeftModel

    theirs = PeftModel.from_pretrained(family_model("llama"), str(adapters["harmless"])).eval()
    with torch.no_grad():
        torch.testing.assert_close(forced_logits(loaded.mocae, 1), theirs(input_ids=IDS).logits, rtol=1e-4, atol=1e-5)
