"""The efficiency benchmark runs end to end and writes the documented schema."""

from __future__ import annotations

import json
import subprocess
import sys


def test_bench_quick_writes_ratios(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "alignx_demo", "bench", "--quick", "--out", str(out),
           "--hidden-size", "64", "--intermediate-size", "128", "--layers", "2"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert set(report["systems"]) == {"base", "mocae_soft", "mocae_top1"}
    ratios = report["ratios"]
    assert {"mocae_soft_vs_base_latency", "mocae_params_vs_base", "mocae_top1_vs_base_latency", "mocae_memory_vs_base"} <= set(ratios)
    counts = report["parameters"]
    assert ratios["mocae_params_vs_base"] == (counts["experts"] + counts["routers"]) / counts["base"]
    # rank 8, three experts on gate/up/down of 2 layers: 2 * 3 * 8 * ((64 + 128) * 2 + (128 + 64))
    assert counts["experts"] == 2 * 3 * 8 * (3 * (64 + 128))
    assert all(s["decode_ms_per_token_median"] > 0 for s in report["systems"].values())
