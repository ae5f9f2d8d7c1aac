"""ZeroGPU as its documentation asks, checked without a Space: a stand-in `spaces` module records each GPU
reservation and enforces the worker-process boundary (plain data in, plain data out, pickled across)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

SCRIPT = r'''
import inspect, json, pickle, sys, threading, types

CALLS = []
PLAIN = (str, int, float, bool, type(None))


def plain(x):
    if isinstance(x, PLAIN):
        return True
    if isinstance(x, (list, tuple)):
        return all(plain(v) for v in x)
    if isinstance(x, dict):
        return all(isinstance(k, str) and plain(v) for k, v in x.items())
    return False


def GPU(fn=None, duration=60):
    """Like spaces.GPU: bare or with a duration (seconds, or a function of the call's arguments)."""
    def wrap(f):
        def run(*args, **kwargs):
            seconds = duration(*args, **kwargs) if callable(duration) else duration
            CALLS.append([f.__name__, seconds])
            assert plain(list(args)) and plain(kwargs), f"{f.__name__}: arguments that cannot cross to a worker"
            args, kwargs = pickle.loads(pickle.dumps((args, kwargs)))
            out = f(*args, **kwargs)
            if not inspect.isgenerator(out):
                assert plain(out), f"{f.__name__}: a result that is not plain data"
                return pickle.loads(pickle.dumps(out))
            def stream():
                for item in out:
                    assert plain(item), f"{f.__name__}: a yield that is not plain data"
                    yield pickle.loads(pickle.dumps(item))
            return stream()
        return run
    return wrap(fn) if fn is not None else wrap


sys.modules["spaces"] = types.SimpleNamespace(GPU=GPU)

from alignx_demo.modeling import load_mocae
from alignx_demo.serving import Limits, ModelContext
from alignx_demo.ui.compare import stream_compare
from alignx_demo.ui.live import stream_generate
from alignx_demo.ui.served import serve
from alignx_demo.ui.tradeoff import stream_presets

key = serve(ModelContext(load_mocae(sys.argv[1], load_in_4bit=False), limits=Limits(request_seconds=42)))
report = {}
*_, last = stream_compare(key, "Tell me about bread.", 3, False, 1.0, 1.0, 0, "soft")
report["compare"] = {"calls": CALLS[:], "runs": sorted(last[-1]["summary"])}
CALLS.clear()
*_, last = stream_presets(key, "Tell me about bread.", 3, 0)
report["presets"] = {"calls": CALLS[:], "runs": sorted(last[-1])}
CALLS.clear()
stop = threading.Event()
stop.set()
*_, last = stream_generate(key, "Tell me a long story.", 40, False, 1.0, 1.0, 0, True, "soft", stop)
report["stopped"] = {"calls": CALLS[:], "finish": last[-1]["finish_reason"]}
print("REPORT " + json.dumps(report))
'''


@pytest.mark.slow
def test_each_request_reserves_the_gpu_once_with_plain_data_and_a_fitting_duration(checkpoint):
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(checkpoint)], capture_output=True, text=True, timeout=300,
                         cwd=REPO, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.split("REPORT ", 1)[1])
    reservation = ["stream_runs", 42 + 15]  # the per-request limit plus the start-up margin
    assert report["compare"] == {"calls": [reservation], "runs": ["calibrated", "flips", "uncalibrated"]}
    assert report["presets"]["calls"] == [reservation] and len(report["presets"]["runs"]) == 4
    assert report["stopped"] == {"calls": [reservation], "finish": "stopped"}
