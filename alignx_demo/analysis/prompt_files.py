"""Reading a prompt set for routing analysis: CSV or JSONL, one prompt per row, an optional axis label.

CSV: a header row with a `prompt` column (or `text`, `instruction`, `question`), optionally `axis`
(or `label`), and any further columns (e.g. `source`), kept per row for slicing. JSONL: one JSON
object per line with the same keys (a bare JSON string is a prompt without a label); a `.json` file
may hold a list of such objects. Axis labels are the model's axes (`MoCaEConfig.axes`; any case): for the
HHH bundle `helpful`, `harmless`, `honest`, also `helpfulness`, `harmlessness`, `honesty`; an empty label
means unlabelled.

Bad rows are left out, each with one sentence naming its row and what is wrong; the rest is used.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alignx_demo.analysis.uploads import read_text
from alignx_demo.config import AXES
from alignx_demo.generation import MAX_PROMPT_CHARS, clean_prompt

PROMPT_KEYS = ("prompt", "text", "instruction", "question")
AXIS_KEYS = ("axis", "label")
HHH_ALIASES = {"helpfulness": "helpful", "harmlessness": "harmless", "honesty": "honest"}
"""The noun forms a label may use for an HHH axis."""
MAX_FILE_BYTES = 20_000_000


def axis_label(value: Any, axes: Sequence[str] = AXES) -> str | None:
    """The axis of `axes` a label names, None for an empty one; ValueError for anything else."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    key = str(value).strip().lower()
    key = HHH_ALIASES.get(key, key) if HHH_ALIASES.get(key) in axes else key
    if key not in axes:
        raise ValueError(f"axis {str(value)[:40]!r} is not one of {', '.join(axes)} (or empty)")
    return key


def _scalar(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def make_row(record: Any, row: int, max_chars: int = MAX_PROMPT_CHARS, axes: Sequence[str] = AXES) -> dict[str, Any]:
    """One analysis row from a parsed record (a dict, or a bare prompt string), its label one of `axes`:
    {"row", "prompt", "axis", "extra": {column: text}, "notices": [...], "changes": [...] (`prompt_changes`)};
    ValueError says what is wrong."""
    if isinstance(record, str):
        record = {"prompt": record}
    if not isinstance(record, dict):
        raise ValueError(f"expected an object with a prompt, got {type(record).__name__}")
    prompt_key = next((k for k in PROMPT_KEYS if k in record), None)
    if prompt_key is None:
        raise ValueError(f"no prompt field (one of {', '.join(PROMPT_KEYS)})")
    axis_key = next((k for k in AXIS_KEYS if k in record), None)
    raw = record[prompt_key] if record[prompt_key] is not None else ""
    prompt, notices = clean_prompt(raw, max_chars)
    axis = axis_label(record[axis_key], axes) if axis_key else None
    extra = {str(k): _scalar(v) for k, v in record.items() if k not in (prompt_key, axis_key) and v is not None}
    return {"row": row, "prompt": prompt, "axis": axis, "extra": extra, "notices": notices,
            "changes": prompt_changes(raw, max_chars)}


def prompt_changes(raw: str, max_chars: int = MAX_PROMPT_CHARS) -> list[str]:
    """How `clean_prompt` changes a (valid) prompt: "cut_to_length" when it keeps only its last
    `max_chars` characters, "cleaned" when it removes or replaces characters; [] when unchanged."""
    whole, _ = clean_prompt(raw, max_chars=len(raw) + 1)
    return [name for name, changed in (("cut_to_length", len(whole) > max_chars), ("cleaned", whole != raw)) if changed]


def _records(text: str, fmt: str) -> list[tuple[str, Any]]:
    """(where, record) pairs; a record that cannot be parsed is an Exception in place of the record."""
    if fmt == "csv":
        reader = csv.DictReader(io.StringIO(text))
        fields = reader.fieldnames or []
        if not any(k in fields for k in PROMPT_KEYS):
            raise ValueError(f"the CSV header has no prompt column (one of {', '.join(PROMPT_KEYS)}); it has: "
                             f"{', '.join(fields)[:200] or 'nothing'}")
        out: list[tuple[str, Any]] = []
        for i, record in enumerate(reader, start=1):
            if None in record:
                extra = ValueError(f"{len(record[None])} more value(s) than the header has columns")
                out.append((f"row {i} (line {reader.line_num})", extra))
            else:
                out.append((f"row {i} (line {reader.line_num})", {k: v for k, v in record.items() if v is not None}))
        return out
    if fmt == "json":
        data = json.loads(text)
        if not isinstance(data, list):
            raise ValueError("a .json prompt file must hold a list of objects (or use JSONL: one object per line)")
        return [(f"item {i}", record) for i, record in enumerate(data, start=1)]
    out = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append((f"line {line_no}", json.loads(line)))
        except json.JSONDecodeError as err:
            out.append((f"line {line_no}", ValueError(f"not valid JSON ({err.msg} at column {err.colno})")))
    return out


def _format(name: str, text: str) -> str:
    suffix = Path(name).suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".json":
        return "json"
    head = text.lstrip()[:1]
    return "json" if head == "[" else "jsonl" if head == "{" else "csv"


def parse_prompt_file(source: str | Path | bytes, name: str | None = None,
                      axes: Sequence[str] = AXES) -> tuple[list[dict[str, Any]], list[str]]:
    """(rows, problems): the usable rows of a CSV/JSONL/JSON prompt file (a path, or its bytes/text
    with `name` giving the file name and so its format), labels among the model's `axes`, and one sentence
    per bad row.

    Each row: {"row": n (1-based, in the file's order), "prompt", "axis": axis | None,
    "extra": {column: text}, "notices": [...], "changes": [...]} (`make_row`). Raises ValueError when
    the file as a whole cannot be read (not UTF-8, no prompt column, not JSON, too large, no rows at all).
    """
    if isinstance(source, Path) or (isinstance(source, str) and name is None):
        name = name or Path(source).name
        source = read_text(source, "prompt file", MAX_FILE_BYTES)
    elif isinstance(source, bytes):
        name = name or "the prompt file"
        source = read_text(source, name, MAX_FILE_BYTES)
    fmt = _format(name or "", source)
    try:
        records = _records(source, fmt)
    except json.JSONDecodeError as err:
        raise ValueError(f"{name} is not valid JSON: {err.msg} at line {err.lineno}") from None
    except csv.Error as err:
        raise ValueError(f"{name} is not a readable CSV file: {err}") from None
    rows, problems = [], []
    for number, (where, record) in enumerate(records, start=1):
        try:
            if isinstance(record, Exception):
                raise record
            rows.append(make_row(record, number, axes=axes))
        except ValueError as err:
            problems.append(f"{where[:1].upper()}{where[1:]}: {err}; left out.")
    if not rows:
        raise ValueError(f"{name} has no usable prompt rows" + (f" ({problems[0]})" if problems else ""))
    return rows, problems
