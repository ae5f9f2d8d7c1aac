"""A quick trained checkpoint (with baselines) and its quick precomputed artefacts, built once per
test session: the builders behind conftest's `trained_run` and `trained_precomputed` fixtures, which
every test of a trained model uses (and which mark it slow)."""

from __future__ import annotations

import atexit
import functools
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from data_fixtures import make_data_dir

REPO = Path(__file__).resolve().parents[1]


@functools.cache
def quick_run() -> tuple[Path, Path]:
    """(checkpoint folder, data folder) of a quick `train all` on synthetic data."""
    root = Path(tempfile.mkdtemp(prefix="alignx-apptest-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    data = make_data_dir(root / "data", n=60)
    out = subprocess.run(
        [sys.executable, "-m", "alignx_demo", "train", "all", "--quick", "--data-dir", str(data), "--out", str(root / "run"), "--no-progress"],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return root / "run", data


@functools.cache
def quick_precomputed() -> Path:
    """`precompute --quick` of the quick run (PCA maps)."""
    from alignx_demo.cli import main

    run, data = quick_run()
    folder = run.parent / "precomputed"
    assert main(["precompute", "--model", str(run), "--data-dir", str(data), "--quick", "--out", str(folder), "--no-progress"]) == 0
    for bench in (REPO / "precomputed").glob("bench*.json"):  # speed reports measure shapes, not this model: the
        shutil.copy(bench, folder / bench.name)               # Benchmarks tab then has its wide tables
    return folder
