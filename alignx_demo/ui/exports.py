"""Downloads of a trace as CSV (one row per token) and JSON (the full trace), one temp folder per request
(`write_downloads` writes any CSV + JSON pair the same way, e.g. a routing analysis).

The CSV has the columns `position, is_prompt, text, id, top_expert, entropy, helpful, harmless,
honest` followed by `layer{ℓ}_{axis}` for every layer; `tokens_from_csv` reads it back.
"""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from alignx_demo.config import AXES

PREFIX = "alignx-export-"
LAYER_COLUMN = re.compile(r"layer\d+_")
"""A per-layer column of `trace_csv` (`layer3_helpful`), told apart from the axis columns before them."""
KEEP_S = 3600
"""Export folders older than this are removed when a new export is written."""


def trace_csv(trace: dict[str, Any]) -> str:
    """One row per token: its weight per axis of the trace (`axes`), then per layer."""
    tokens, axes = trace.get("tokens") or [], trace.get("axes") or list(AXES)
    n_layers = len(tokens[0]["layers"]) if tokens else 0
    layer_cols = [f"layer{l}_{a}" for l in range(n_layers) for a in axes]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["position", "is_prompt", "text", "id", "top_expert", "entropy", *axes, *layer_cols])
    for t in tokens:
        writer.writerow([t["position"], int(t["is_prompt"]), t["text"], t["id"], t["top_expert"], t["entropy"],
                         *(t["weights"][a] for a in axes), *(v for row in t["layers"] for v in row)])
    return out.getvalue()


def runs_csv(panels: list[tuple[str, dict[str, Any]]]) -> str:
    """Several runs in one CSV: a first column `run` naming each (e.g. the preset), then `trace_csv`'s columns."""
    rows: list[list[str]] = []
    for label, trace in panels:
        table = list(csv.reader(io.StringIO(trace_csv(trace))))
        if not rows:
            rows.append(["run", *table[0]])
        rows += [[label, *row] for row in table[1:]]
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    return out.getvalue()


def tokens_from_csv(text: str) -> list[dict[str, Any]]:
    """The token entries of a CSV written by `trace_csv` (numbers as written, i.e. 6 decimals)."""
    reader = csv.DictReader(io.StringIO(text))
    header = reader.fieldnames or []
    axes = [c for c in header[header.index("entropy") + 1 :] if not LAYER_COLUMN.match(c)]  # the trace's axes, in order
    n_layers = sum(1 for c in header if LAYER_COLUMN.match(c)) // len(axes)
    tokens = []
    for row in reader:
        tokens.append({
            "text": row["text"], "id": int(row["id"]), "position": int(row["position"]), "is_prompt": row["is_prompt"] == "1",
            "weights": {a: float(row[a]) for a in axes},
            "layers": [[float(row[f"layer{l}_{a}"]) for a in axes] for l in range(n_layers)],
            "entropy": float(row["entropy"]), "top_expert": row["top_expert"],
        })
    return tokens


def _cleanup(root: Path) -> None:
    now = time.time()
    for old in root.glob(PREFIX + "*"):
        try:
            if now - old.stat().st_mtime > KEEP_S:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass


def export_folder(keep: bool = False) -> Path:
    """A fresh temp folder for one request's downloads, old ones cleared first. Folders are removed after `KEEP_S`
    unless `keep` (files the page offers from its start)."""
    root = Path(tempfile.gettempdir())
    _cleanup(root)
    return Path(tempfile.mkdtemp(prefix="alignx-page-" if keep else PREFIX))


def write_downloads(stem: str, csv_text: str, data: Any, keep: bool = False) -> tuple[str, str]:
    """Write `<stem>.csv` (the text given) and `<stem>.json` (`data`) into a fresh temp folder; return their paths."""
    folder = export_folder(keep)
    csv_path, json_path = folder / f"{stem}.csv", folder / f"{stem}.json"
    csv_path.write_text(csv_text, encoding="utf-8")
    json_path.write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")
    return str(csv_path), str(json_path)


def write_exports(trace: dict[str, Any], stem: str = "alignx-trace") -> tuple[str, str]:
    """Write `<stem>.csv` and `<stem>.json` of a trace into a fresh temp folder; return their paths."""
    return write_downloads(stem, trace_csv(trace), trace)
