"""Faults the served app must survive, each ending with the server still answering a health call:
a truncated or corrupt checkpoint (degraded mode), stale or corrupt precomputed files, bitsandbytes
unavailable, running out of memory in the middle of a generation, and any other exception in a request.

Covered elsewhere and not repeated here: a missing checkpoint folder
(`test_app.test_missing_model_serves_notices_and_precomputed_tabs`), missing precomputed files
(`test_app.test_missing_precomputed_files_give_notices_and_the_rest_works`) and each broken checkpoint
file at library level (`test_checkpoint.test_broken_checkpoint_gives_clear_error_naming_the_file`).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import httpx
import pytest
import torch
from gradio_client.exceptions import AppError
from test_app import GEN, launch

from alignx_demo.modeling import load_mocae
from alignx_demo.serving import ModelContext, ServerOptions, load_context
from alignx_demo.ui.validation import OUT_OF_MEMORY


def answers(demo, client) -> None:
    """The health call: the page config is served and a short generation completes."""
    assert httpx.get(f"{demo.local_url.rstrip('/')}/config", timeout=10).status_code == 200
    _, _, trace = client.predict("Are you still there?", 2, *GEN, True, "soft", api_name="/generate")
    assert trace["finish_reason"] in ("eos", "length")


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(
    "damage, named",
    [
        (lambda c: _truncate(c / "base" / "model.safetensors"), "base"),
        (lambda c: _truncate(c / "router.safetensors"), "router.safetensors"),
        (lambda c: (c / "experts" / "helpful" / "adapter_model.safetensors").write_bytes(b"\x00" * 64), "adapter_model.safetensors"),
        (lambda c: (c / "base" / "tokenizer.json").write_text('{"model": 5}'), "tokenizer"),
        (lambda c: (c / "base" / "config.json").write_text('{"model_type": "llama", "hidden_size": "wide"}'), "config"),
        (lambda c: (c / "experts" / "honest" / "adapter_config.json").write_text("[]"), "adapter_config.json"),
    ],
    ids=["truncated-base-weights", "truncated-router", "corrupt-expert", "corrupt-tokenizer", "bad-config-value",
         "adapter-config-not-an-object"],
)
def test_broken_model_starts_degraded_serving_precomputed_tabs(checkpoint, damage, named, trained_precomputed):
    damage(checkpoint)
    context = load_context(ServerOptions(model=checkpoint, load_in_4bit=False))
    assert context.loaded is None and named in context.problem and "Traceback" not in context.problem
    demo, client = launch(context, trained_precomputed)
    try:
        page = json.dumps(demo.config, default=str)
        assert "could not be loaded" in page and named in page and "Reliability" in page and "Stage 1 experts" in page
        with pytest.raises(AppError, match="could not be loaded"):
            client.predict("hi", 2, *GEN, True, "soft", api_name="/generate")
        assert httpx.get(f"{demo.local_url.rstrip('/')}/config", timeout=10).status_code == 200
    finally:
        demo.close()


def test_stale_and_corrupt_precomputed_files_give_notices_and_generation_works(tmp_path, trained_run, trained_precomputed):
    folder = shutil.copytree(trained_precomputed, tmp_path / "precomputed")
    reliability = json.loads((folder / "reliability.json").read_text())
    (folder / "reliability.json").write_text(json.dumps(reliability | {"version": reliability["version"] + 1}))
    _truncate(folder / "map_features.safetensors")
    run, _ = trained_run
    demo, client = launch(ModelContext(load_mocae(run, load_in_4bit=False)), folder)
    try:
        page = json.dumps(demo.config, default=str)
        assert "Precomputed file is stale" in page and "Stage 1 experts" in page
        with pytest.raises(AppError, match="Map features unusable"):
            client.predict("How do I bake bread?", api_name="/place_prompt")
        answers(demo, client)
    finally:
        demo.close()


def test_without_bitsandbytes_the_app_starts_in_full_precision_with_an_operator_notice(checkpoint, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # `import bitsandbytes` now fails as if not installed
    context = load_context(ServerOptions(model=checkpoint, load_in_4bit=True))
    assert context.loaded is not None and not context.loaded.quantized
    assert any(n.startswith("4-bit off: bitsandbytes unavailable") for n in context.notices)
    demo, client = launch(context, checkpoint.parent / "no-precomputed")
    try:  # an operator's notice: in the About tab, not in the header or in a visitor's run
        values = {c.get("props", {}).get("elem_id"): json.dumps(c.get("props", {}).get("value"), default=str)
                  for c in demo.config["components"]}
        assert "full precision" in values["model-status"] and "4-bit off" not in values["model-status"]
        assert "4-bit off: bitsandbytes unavailable" in json.dumps(demo.config, default=str)
        _, summary, trace = client.predict("hello", 3, *GEN, True, "soft", api_name="/generate")
        assert not any(n.startswith("4-bit off") for n in trace["notices"]) and "4-bit off" not in summary
        answers(demo, client)
    finally:
        demo.close()


@pytest.fixture
def served_model(checkpoint, tmp_path):
    """(loaded model, demo, client) of the tiny checkpoint, so a test can break the model under the server."""
    loaded = load_mocae(checkpoint, load_in_4bit=False)
    demo, client = launch(ModelContext(loaded), tmp_path / "no-precomputed")
    yield loaded, demo, client
    demo.close()


def fail_once(monkeypatch, loaded, error: Exception, after_calls: int) -> None:
    """Make the base model's forward raise `error` on its call number `after_calls + 1`, once."""
    forward, calls = loaded.mocae.model.forward, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == after_calls + 1:
            raise error
        return forward(*args, **kwargs)

    monkeypatch.setattr(loaded.mocae.model, "forward", flaky)


def test_out_of_memory_mid_stream_gives_a_clear_error_and_the_next_request_works(served_model, monkeypatch):
    loaded, demo, client = served_model
    fail_once(monkeypatch, loaded, torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), after_calls=3)
    job = client.submit("Tell me a long story about bread.", 20, *GEN, True, "soft", api_name="/generate")
    with pytest.raises(AppError) as raised:
        job.result(timeout=60)
    assert raised.value.message == OUT_OF_MEMORY
    assert job.outputs() and job.outputs()[0][2]["finish_reason"] is None  # tokens had streamed before it failed
    answers(demo, client)


@pytest.mark.parametrize(
    "api, args",
    [("/generate", ("hi", 4, *GEN, True, "soft")), ("/compare", ("hi", 4, *GEN, "soft")),
     ("/tradeoff", ("hi", 1, 0, 0, 1.0, False, 4, 0)), ("/presets", ("hi", 4, 0))],
)
def test_any_exception_in_a_request_gives_a_clear_error_and_the_server_keeps_serving(served_model, monkeypatch, api, args):
    loaded, demo, client = served_model
    fail_once(monkeypatch, loaded, RuntimeError("internal detail that must not reach visitors"), after_calls=1)
    with pytest.raises(AppError) as raised:
        client.predict(*args, api_name=api)
    message = raised.value.message
    assert message.startswith("Something went wrong on the server") and "(RuntimeError)" in message
    assert "internal detail" not in message and "Traceback" not in message
    answers(demo, client)
