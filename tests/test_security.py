"""Static checks of the rules in SECURITY.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

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


class _Tripwire:
    """Unpickling this object creates `path`: proof that a pickle was loaded."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_models_load_with_safetensors_only(checkpoint, tmp_path):
    """A pickled weight file beside the safetensors is never read, and one alone is refused."""
    import torch

    from alignx_demo.modeling import CheckpointError, load_mocae

    base = checkpoint / "base"
    want = {k: v.clone() for k, v in load_mocae(checkpoint, load_in_4bit=False).mocae.model.state_dict().items()}
    tripwire = tmp_path / "unpickled"
    zeros = {k: torch.zeros_like(v) for k, v in want.items()} | {"tripwire": _Tripwire(str(tripwire))}
    torch.save(zeros, base / "pytorch_model.bin")
    loaded = load_mocae(checkpoint, load_in_4bit=False)
    assert not tripwire.exists(), "a pickle was unpickled"
    assert all(torch.equal(v, want[k]) for k, v in loaded.mocae.model.state_dict().items()), "weights read from the pickle"
    (base / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="safetensors only"):
        load_mocae(checkpoint, load_in_4bit=False)
    assert not tripwire.exists()
