"""The Benchmarks tab's readers and figures on hand-made reports."""

from __future__ import annotations

import json

from alignx_demo.ui.results import BENCH_SCHEMA, EVAL_SCHEMA, bench_figure, bench_table, metric_figure, read_result

EVAL = {"schema": EVAL_SCHEMA, "systems": {
    "base": {"mc1": {"value": 0.2, "ci95": [0.1, 0.3], "n": 10}, "heldout_loss": {"helpful": 4.0}},
    "mocae_full": {"mc1": {"value": 0.3, "ci95": [0.2, 0.45], "n": 10}, "heldout_loss": {"helpful": 3.9}},
}}
BENCH = {"schema": BENCH_SCHEMA, "ratios": {"dense_moe_vs_mocae_latency": 1.3, "mocae_params_vs_base": 0.01},
         "analytic": {"dense_moe_vs_mocae_macs": 1.39},
         "systems": {n: {"model_bytes": b, "decode_ms_b1_median": m, "decode_ms_b1_spread": [m - 1, m + 1]}
                     for n, b, m in (("base", 2**20, 10.0), ("dense_moe", 2**21, 13.0))}}


def test_missing_stale_and_good_reports(tmp_path):
    assert read_result(tmp_path, "eval.json", EVAL_SCHEMA, "CMD")[1] == f"Missing {tmp_path / 'eval.json'}. Build it with `CMD`."
    (tmp_path / "eval.json").write_text(json.dumps({"schema": "old"}))
    assert "Stale" in read_result(tmp_path, "eval.json", EVAL_SCHEMA, "CMD")[1]
    (tmp_path / "eval.json").write_text("{")
    assert "Unreadable" in read_result(tmp_path, "eval.json", EVAL_SCHEMA, "CMD")[1]
    (tmp_path / "eval.json").write_text(json.dumps(EVAL))
    assert read_result(tmp_path, "eval.json", EVAL_SCHEMA, "CMD") == (EVAL, None)


def test_figures_carry_the_numbers():
    bars = metric_figure(EVAL, "mc1").data[0]
    assert list(bars.x) == ["base", "mocae_full"] and list(bars.y) == [0.2, 0.3]
    assert [round(v, 6) for v in bars.error_y.array] == [0.1, 0.15]
    scatter = bench_figure(BENCH)
    assert [t.text[0] for t in scatter.data] == ["base", "dense_moe"]
    table = bench_table(BENCH)
    row = table[table.pair == "dense_moe_vs_mocae_latency"].iloc[0]
    assert row.measured == 1.3 and row.analytic == 1.39
