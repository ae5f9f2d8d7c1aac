"""Static checks of the rules in SECURITY.md."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCES = [p for p in [REPO / "app.py", *(REPO / "alignx_demo").rglob("*.py")] if p.is_file()]


def test_nothing_is_unpickled():
    pattern = re.compile(r"\btorch\.load\(|\bimport pickle\b|\bpickle\.loads?\(|\bjoblib\.load\(|weights_only\s*=\s*False")
    offenders = [str(p.relative_to(REPO)) for p in SOURCES if pattern.search(p.read_text())]
    assert not offenders, f"unpickling in {offenders}"


def test_remote_code_and_share_links_are_never_hard_wired_on():
    pattern = re.compile(r"trust_remote_code\s*=\s*True|share\s*=\s*True")
    offenders = [str(p.relative_to(REPO)) for p in SOURCES if pattern.search(p.read_text())]
    assert not offenders, offenders


def test_models_load_with_safetensors_only():
    text = (REPO / "alignx_demo" / "modeling" / "checkpoint.py").read_text()
    assert '"use_safetensors": True' in text
