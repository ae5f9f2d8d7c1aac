"""`doctor`: the one-command check runs every step on the CPU on a tiny checkpoint, and says what failed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
STEPS = ["device", "load", "placement", "generate_soft_calibrated", "generate_top1", "bench"]


def doctor(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "alignx_demo", "doctor", *args], capture_output=True, text=True, timeout=600, cwd=REPO)


@pytest.mark.slow
def test_doctor_on_cpu_passes_every_step(checkpoint, tmp_path):
    out = tmp_path / "doctor.json"
    done = doctor("--device", "cpu", "--model", str(checkpoint), "--new-tokens", "6", "--bench-tokens", "4", "--bench-rounds", "1",
                  "--out", str(out))
    report = json.loads(out.read_text())
    failed = {s["name"]: s.get("error") for s in report["steps"] if not s["ok"]}
    assert done.returncode == 0 and report["ok"] and not failed, (failed, done.stderr[-2000:])
    assert [s["name"] for s in report["steps"]] == STEPS
    steps = {s["name"]: s["details"] for s in report["steps"]}
    assert steps["load"]["quantized"] and "4-bit NF4" in steps["load"]["description"]
    assert steps["placement"]["layer_devices"] == ["cpu"] and steps["placement"]["expert_dtypes"] == ["torch.float32"]
    for name in ("generate_soft_calibrated", "generate_top1"):
        assert steps[name]["generated_tokens"] >= 1 and steps[name]["settings"]["generation"]["do_sample"]
        assert steps[name]["settings"]["calibration"] == {"temperature": True}
    assert steps["generate_soft_calibrated"]["recompute_max_abs_diff"] < 1e-4  # the streamed router context is exact
    bench = steps["bench"]
    assert set(bench["decode_ms"]) == {"base", "mocae_soft", "mocae_top1", "mocae_soft_uncalibrated"}
    assert bench["tracemalloc_peak_bytes"] > 0
    assert bench["ratios"]["mocae_soft_vs_base"] > 0 and bench["rss_bytes"] > 0
    versions = report["versions"]
    assert versions["torch"] == torch.__version__.split("+")[0] or versions["torch"] == torch.__version__
    assert versions["bitsandbytes"] and versions["transformers"] and report["device"]["type"] == "cpu"
    assert "all steps passed" in done.stdout


def test_doctor_reports_a_failing_step_and_exits_1(checkpoint, tmp_path):
    (checkpoint / "router.safetensors").write_bytes(b"\x00broken")
    out = tmp_path / "doctor.json"
    done = doctor("--device", "cpu", "--model", str(checkpoint), "--out", str(out))
    report = json.loads(out.read_text())
    assert done.returncode == 1 and not report["ok"] and "Traceback" not in done.stderr
    steps = {s["name"]: s for s in report["steps"]}
    assert steps["device"]["ok"] and not steps["load"]["ok"] and "router.safetensors" in steps["load"]["error"]
    assert steps["bench"]["error"] == "skipped: load failed"
    assert "FAIL load" in done.stdout
