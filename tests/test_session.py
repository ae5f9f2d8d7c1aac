"""The notebook workflow: one `Session` loads a model once and runs generate, analyze, attribute, settle, diff
and compare on it; library warnings condensed to one line each."""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import build_checkpoint

import alignx_demo
from alignx_demo.modeling.calibration import CalibrationStack, TemperatureScaling


def test_one_session_loads_once_and_runs_every_call(tmp_path, tokenizer, monkeypatch):
    from alignx_demo import modeling

    ckpt = build_checkpoint(tmp_path / "ckpt", tokenizer, calibration=CalibrationStack(TemperatureScaling(torch.tensor([2.0, 0.5]))))
    loads = []
    real = modeling.load_mocae
    monkeypatch.setattr(modeling, "load_mocae", lambda *a, **k: loads.append(a) or real(*a, **k))
    session = alignx_demo.load(ckpt, load_in_4bit=False, threads=1)  # `from alignx_demo import Session` works alike
    assert isinstance(session, alignx_demo.Session) and session.name.startswith("ckpt (llama")
    trace = session.generate("How do I bake bread?", max_new_tokens=4)
    streamed = []
    again = session.generate("How do I bake bread?", max_new_tokens=4, calibrated=False, on_token=streamed.append)
    assert trace["schema"] == "alignx-trace/1" and len(streamed) == len(again["tokens"])
    rows = [{"prompt": "How do I bake bread?", "axis": "helpful"}, {"prompt": "Is Paris in France?", "axis": "honest"}, "Hi"]
    report = session.analyze(rows, generate_tokens=2)
    assert (report["analysed"], report["levels"]["prompt"]["labelled"]) == (3, 2) and "generation" in report["levels"]
    effects = session.attribute(trace)
    assert effects["trace"] is trace and effects["batch"] == {"run": 7} and len(effects["tokens"]) == 4
    assert session.attribute("Why?", max_new_tokens=2)["trace"]["prompt"] == "Why?"
    assert session.settle("How do I bake bread?")["settle"]["tokens"] > 0
    diff = session.diff(trace, again)
    assert diff["settings_changed"]["routing.calibrated"] == [True, False] and diff["aligned"] > 0
    same = session.compare(session, rows, generate_tokens=0)
    assert same["levels"]["prompt"]["mcnemar"]["discordant"] == 0 and same["levels"]["prompt"]["mcnemar"]["p_value"] == 1.0
    assert same["levels"]["prompt"]["ece_difference"]["value"] == 0 and set(same["analyses"]) == {"a", "b"}
    assert len(loads) == 1  # every call above ran on the one model loaded


def test_library_warnings_are_one_line_each_once_a_process(monkeypatch, caplog):
    from alignx_demo.quiet import KERNELS_WARNING, LENGTH_WARNING, OneLine, quiet_libraries

    monkeypatch.setattr(OneLine, "said", set())
    quiet_libraries()
    quiet_libraries()
    passed: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            passed.append(record.getMessage())

    loggers = [logging.getLogger(name) for name, _ in (KERNELS_WARNING, LENGTH_WARNING)]
    keep = Keep()
    for logger in loggers:
        logger.addHandler(keep)
    try:
        with caplog.at_level(logging.INFO, logger="alignx_demo"):
            for _ in range(3):
                loggers[1].warning(f"{LENGTH_WARNING[1]} maximum sequence length for this model (2668 > 256). Running …")
                loggers[0].warning(f"{KERNELS_WARNING[1]}: No module named 'kernels'. Please make sure you already …")
            loggers[1].error("a real tokenizer error")
    finally:
        for logger in loggers:
            logger.removeHandler(keep)
    assert passed == ["a real tokenizer error"]  # the two messages never reach a handler; errors always do
    lines = [r.getMessage() for r in caplog.records if r.name == "alignx_demo"]
    assert len(lines) == 2 and all("\n" not in line for line in lines)
    assert sum("longer than the model's context" in line for line in lines) == 1
    assert sum("`kernels` package is not installed" in line for line in lines) == 1
    assert sum(isinstance(f, OneLine) for logger in loggers for f in logger.filters) == 2  # installed once each


def test_the_command_line_prints_python_warnings_on_one_line(monkeypatch, capsys, tmp_path):
    import warnings

    from alignx_demo.cli import main

    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)  # restored after the test
    assert main(["diff-traces", str(tmp_path / "missing.json"), str(tmp_path / "missing.json")]) == 2
    assert capsys.readouterr().err.count("\n") == 1  # a missing file: one sentence
    line = warnings.formatwarning(FutureWarning("`x` is deprecated\nuse `y`"), FutureWarning, "/a/b/lib.py", 7)
    assert line == "warning: FutureWarning: `x` is deprecated use `y` (lib.py:7)\n"


@pytest.mark.parametrize("name", ["Session", "load"])
def test_the_session_is_importable_from_the_package(name):
    assert callable(getattr(alignx_demo, name)) and name in alignx_demo.__all__
