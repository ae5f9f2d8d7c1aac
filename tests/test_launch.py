"""Starting the app on a taken port: one sentence and exit code 2, before the model loads (no traceback)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from alignx_demo.serving import port_problem

REPO = Path(__file__).resolve().parents[1]


def listening_socket() -> socket.socket:
    """A socket listening on a free port of 127.0.0.1 (loopback only), as another server would."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    return sock


def test_port_problem_names_a_taken_port_and_passes_a_free_one():
    with listening_socket() as taken:
        port = taken.getsockname()[1]
        problem = port_problem("127.0.0.1", port)
        assert problem is not None and f"Port {port} on 127.0.0.1 is already in use" in problem and "--port" in problem
    assert port_problem("127.0.0.1", port) is None  # closed again: free
    assert "from 1 to 65535" in port_problem("127.0.0.1", 70000)


def test_the_app_on_a_taken_port_exits_with_one_sentence_before_loading_the_model(tmp_path):
    env = {**os.environ, "ALIGNX_MODEL": str(tmp_path / "no-model-here"), "GRADIO_ANALYTICS_ENABLED": "False"}
    with listening_socket() as taken:
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "app.py", "--host", "127.0.0.1", "--port", str(port)], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=180, check=False)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, done.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith(f"Port {port} on 127.0.0.1 is already in use")
    assert "Traceback" not in done.stderr and "model not loaded" not in done.stderr  # it stopped before loading
