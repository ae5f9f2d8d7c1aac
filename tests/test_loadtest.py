"""16 concurrent gradio_client sessions × 5 requests against the app on loopback: no failures, no
cross-talk, and the `loadtest` command's report."""

from __future__ import annotations

import subprocess
import sys

import pytest
from test_app import launch

from alignx_demo.loadtest import run_loadtest
from alignx_demo.modeling import load_mocae
from alignx_demo.serving import ModelContext


@pytest.mark.slow
def test_sixteen_clients_five_requests_each(checkpoint, tmp_path):
    demo, client = launch(ModelContext(load_mocae(checkpoint, load_in_4bit=False)), tmp_path / "no-precomputed")
    try:
        report = run_loadtest(demo.local_url, clients=16, requests=5, max_new_tokens=4)
        assert report["total"] == 80
        assert report["errors"] == 0, report["error_samples"]
        assert report["crosstalk"] == 0
        assert 0 < report["p50_s"] <= report["p95_s"]
        client.predict("still there?", 2, False, 1.0, 1.0, 0, True, "soft", api_name="/generate")  # server still answers
        cli = subprocess.run([sys.executable, "-m", "alignx_demo", "loadtest", "--url", demo.local_url, "--clients", "2",
                              "--requests", "1", "--max-new-tokens", "2"], capture_output=True, text=True, timeout=300)
        assert cli.returncode == 0 and '"errors": 0' in cli.stdout
    finally:
        demo.close()
