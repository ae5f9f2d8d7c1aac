"""Traces as a stable, versioned format: the schema, validation, loading, and a token-by-token diff.

A trace is what `generation.RoutedGeneration.trace()` returns, what `generate --json` prints and what
the app's JSON download holds. `TRACE_JSON_SCHEMA` describes version 1 (`"schema": "alignx-trace/1"`)
in JSON Schema draft 2020-12 form; `validate_trace` checks a parsed object against it (with a small
built-in checker for the keywords the schema uses, so no extra dependency) and then checks what a
schema cannot say (one layer count for all tokens, consecutive positions, prompt tokens first,
weights that sum to 1). `schema_markdown()` renders the field table of docs/traces.md from the same
dict, so the description and the check never drift apart.

`diff_traces(a, b)` aligns two traces token by token — the common prefix, then a sequence alignment of
the token ids, so two runs that part and meet again stay aligned — and reports every stretch where they
differ, the first divergence, the per-token weight differences of the aligned tokens and the tokens
whose routed (top) expert differs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from difflib import SequenceMatcher
from pathlib import Path
from typing import Any

from alignx_demo.analysis.uploads import read_text
from alignx_demo.config import AXES, MAX_AXES, MIN_AXES, validate_axes
from alignx_demo.generation import TRACE_SCHEMA

FINISH_REASONS = ("eos", "length", "stopped", "time_limit")
MAX_TRACE_BYTES = 50_000_000
"""`load_trace` refuses larger inputs (a 2,048-token trace of a 32-layer model is about 2 MB)."""
SUM_TOLERANCE = 2e-3
"""Weights are written with 6 decimals; a row of K may sum to 1 within this."""

def _token_schema(axes: Sequence[str] | None, k_min: int, k_max: int, unit: dict[str, Any]) -> dict[str, Any]:
    """The schema of one entry of `tokens` (`trace_schema`): its layer rows hold k_min to k_max weights."""
    return {
        "type": "object",
        "required": ["text", "id", "position", "is_prompt", "weights", "layers", "entropy", "top_expert"],
        "properties": {
            "text": {"type": "string", "description": "the token's text piece (pieces add up to the text)"},
            "id": {"type": "integer", "minimum": 0, "description": "token id"},
            "position": {"type": "integer", "minimum": 0, "description": "index in the sequence, from 0"},
            "is_prompt": {"type": "boolean", "description": "prompt token (routing at its own position) or "
                                                            "generated (routing of the previous position)"},
            "weights": {"$ref": "#/$defs/weights", "description": "mean over layers of the routing weights"},
            "layers": {
                "type": "array", "minItems": 1,
                "description": "per decoder layer, one weight per axis in `axes` order (L × K)",
                "items": {"type": "array", "minItems": k_min, "maxItems": k_max, "items": unit},
            },
            "entropy": {"type": "number", "minimum": 0, "description": "mean over layers of the routing entropy, nats"},
            "top_expert": ({"enum": list(axes)} if axes else {"type": "string"})
                          | {"description": "argmax of `weights`, one of `axes`"},
        },
    }


def trace_schema(axes: Sequence[str] | None = None) -> dict[str, Any]:
    """The version-1 trace schema. Without `axes`, the one every trace follows (any 2 to 6 axes, which each
    trace names in `axes`); with them, the schema of a trace of a model with exactly these axes: every weights
    object has one key per axis, every layer row one number per axis."""
    k_min, k_max = (len(axes), len(axes)) if axes else (MIN_AXES, MAX_AXES)
    unit = {"type": "number", "minimum": 0, "maximum": 1}
    weights: dict[str, Any] = {"type": "object", "description": "routing weight of each expert by axis name (≥ 0, summing to 1)"}
    weights |= ({"required": list(axes), "properties": dict.fromkeys(axes, unit), "additionalProperties": False}
                if axes else {"additionalProperties": unit})
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": TRACE_SCHEMA,
        "title": "AlignX routed-generation trace, version 1",
        "description": "One prompt and its generation, every token with the routing weights that produced it.",
        "type": "object",
        "required": ["schema", "prompt", "model", "settings", "axes", "notices", "finish_reason", "text", "tokens"],
        "properties": {
            "schema": {"const": TRACE_SCHEMA, "description": f"format name and version, `{TRACE_SCHEMA}`"},
            "prompt": {"type": "string", "description": "the prompt as used (control characters removed, cut to the app's limit)"},
            "run_weights": {"$ref": "#/$defs/weights",
                            "description": "optional: the run's weights as the summaries show them — the mean over generated "
                                           "tokens of `weights`; if none was generated, the prompt tokens' mean, pooled by the "
                                           "calibration when calibrated without an axis prior"},
            "model": {"type": "string", "description": "the loaded model, in words (folder, family, layers, precision)"},
            "settings": {
                "type": "object",
                "description": "how the trace was produced: `generation`, `routing` (mode and calibrated required), `calibration`",
                "required": ["routing"],
                "properties": {
                    "generation": {"type": "object",
                                   "description": "`GenerationSettings`: max_new_tokens, do_sample, temperature, top_p, seed"},
                    "routing": {
                        "type": "object",
                        "description": "`RoutingSettings`: mode, calibrated, axis_prior, prior_blend",
                        "required": ["mode", "calibrated"],
                        "properties": {
                            "mode": {"enum": ["soft", "top1"]},
                            "calibrated": {"type": "boolean"},
                            "axis_prior": {"type": ["array", "null"], "items": {"type": "number", "minimum": 0},
                                           "minItems": k_min, "maxItems": k_max},
                            "prior_blend": {"type": "number", "minimum": 0, "maximum": 1},
                        },
                    },
                    "calibration": {
                        "type": ["object", "null"],
                        "description": "calibration parts switched on (null when uncalibrated or the model has none)",
                        "additionalProperties": {"type": "boolean"},
                    },
                },
            },
            "axes": ({"const": list(axes)} if axes else {"type": "array", "items": {"type": "string"}, "minItems": MIN_AXES,
                                                         "maxItems": MAX_AXES})
                    | {"description": "the model's axes (its experts' names: `helpful`, `harmless`, `honest` for the HHH "
                                      "bundle), the order of every weight row"},
            "convention": {"type": "string", "description": "which forward's routing each token carries, in words"},
            "notices": {"type": "array", "items": {"type": "string"}, "description": "what was changed or cut, one sentence each"},
            "finish_reason": {"enum": [*FINISH_REASONS, None],
                              "description": "eos, length, stopped, time_limit; null while streaming"},
            "text": {"type": "string", "description": "the generated text"},
            "tokens": {"type": "array", "items": {"$ref": "#/$defs/token"},
                       "description": "prompt tokens, then generated tokens"},
        },
        "$defs": {
            "token": _token_schema(axes, k_min, k_max, unit),
            "weights": weights,
        },
    }


TRACE_JSON_SCHEMA: dict[str, Any] = trace_schema()
"""The schema every version-1 trace follows; `trace_schema(trace["axes"])` is a given trace's own, stricter one."""


class TraceError(ValueError):
    """A trace that does not follow the schema; `errors` lists every problem found (path: what)."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        shown = "; ".join(errors[:5]) + (f"; and {len(errors) - 5} more" if len(errors) > 5 else "")
        super().__init__(f"not a valid {TRACE_SCHEMA} trace: {shown}")


# a checker for the JSON Schema keywords TRACE_JSON_SCHEMA uses -----------------------------------

_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, (list, tuple)),  # a tuple: a trace not yet written as JSON
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
    "null": lambda v: v is None,
}


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, float) or math.isfinite(value) else str(value)
    kind = "null" if value is None else type(value).__name__
    return f"{kind} {text[:40]}{'…' if len(text) > 40 else ''}"


def _check(value: Any, schema: dict[str, Any], path: str, root: dict[str, Any], errors: list[str], limit: int) -> None:
    if len(errors) >= limit:
        return
    where = path or "the trace"
    if "$ref" in schema:
        _check(value, root["$defs"][schema["$ref"].rsplit("/", 1)[-1]], path, root, errors, limit)
    if "const" in schema and value != schema["const"]:
        errors.append(f"{where}: must be {json.dumps(schema['const'])}, got {_show(value)}")
        return
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: must be one of {', '.join(json.dumps(e) for e in schema['enum'])}, got {_show(value)}")
        return
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_TYPES[t](value) for t in types):
            errors.append(f"{where}: expected {' or '.join(types)}, got {_show(value)}")
            return
    if _TYPES["number"](value):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{where}: must be ≥ {schema['minimum']}, got {value}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{where}: must be ≤ {schema['maximum']}, got {value}")
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                errors.append(f"{where}: missing field {key!r}")
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            sub = f"{path}.{key}" if path else key
            if key in properties:
                _check(item, properties[key], sub, root, errors, limit)
            elif extra is False:
                errors.append(f"{where}: unexpected field {key!r}")
            elif isinstance(extra, dict):
                _check(item, extra, sub, root, errors, limit)
    if isinstance(value, (list, tuple)):
        if "minItems" in schema and len(value) < schema["minItems"]:
            errors.append(f"{where}: needs at least {schema['minItems']} item(s), has {len(value)}")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(f"{where}: allows at most {schema['maxItems']} item(s), has {len(value)}")
        if "items" in schema:
            for i, item in enumerate(value):
                _check(item, schema["items"], f"{path}[{i}]", root, errors, limit)


def _consistency(trace: dict[str, Any]) -> list[str]:
    """What the schema cannot say: one layer count, consecutive positions, prompt first, sums of 1."""
    errors: list[str] = []
    tokens = trace["tokens"]
    if not tokens:
        return errors
    n_layers = len(tokens[0]["layers"])
    first = tokens[0]["position"]
    seen_generated = False
    for i, t in enumerate(tokens):
        where = f"tokens[{i}]"
        if len(t["layers"]) != n_layers:
            errors.append(f"{where}.layers: {len(t['layers'])} layers, but tokens[0] has {n_layers}")
        if t["position"] != first + i:
            errors.append(f"{where}.position: expected {first + i} (positions are consecutive), got {t['position']}")
        if t["is_prompt"] and seen_generated:
            errors.append(f"{where}: a prompt token after a generated token")
        seen_generated = seen_generated or not t["is_prompt"]
        total = sum(t["weights"].values())
        if abs(total - 1.0) > SUM_TOLERANCE:
            errors.append(f"{where}.weights: sum to {total:.6f}, not 1")
        for layer, row in enumerate(t["layers"]):
            if abs(sum(row) - 1.0) > SUM_TOLERANCE:
                errors.append(f"{where}.layers[{layer}]: sum to {sum(row):.6f}, not 1")
                break
        if t["weights"][t["top_expert"]] < max(t["weights"].values()) - 1e-6:
            errors.append(f"{where}.top_expert: {t['top_expert']!r} is not the largest weight")
        if len(errors) >= 20:
            break
    return errors


def validate_trace(obj: Any, max_errors: int = 20) -> dict[str, Any]:
    """Return `obj` when it is a valid version-1 trace; else raise a TraceError listing each problem
    by its path (`tokens[3].weights.helpful: expected number, got string "x"`)."""
    if isinstance(obj, dict) and isinstance(obj.get("schema"), str) and obj["schema"] != TRACE_SCHEMA \
            and obj["schema"].startswith("alignx-trace/"):
        raise TraceError([f"schema: this version reads {TRACE_SCHEMA}, the trace is {obj['schema']}"])
    errors: list[str] = []
    _check(obj, TRACE_JSON_SCHEMA, "", TRACE_JSON_SCHEMA, errors, max_errors)
    if not errors:
        try:
            own = trace_schema(validate_axes(obj["axes"]))
        except ValueError as err:
            raise TraceError([f"axes: {err}"]) from None
        _check(obj, own, "", own, errors, max_errors)
    if not errors:
        errors = _consistency(obj)
    if errors:
        raise TraceError(errors)
    return obj


def load_trace(source: str | Path | bytes, index: int | None = None) -> dict[str, Any]:
    """A validated trace from a file path, JSON text or bytes. Also reads a JSON object that wraps one
    trace under "trace" (e.g. an `attribute` output) or several under "traces" (pick one by `index`)."""
    if isinstance(source, (Path, bytes)) or (isinstance(source, str) and source.lstrip()[:1] not in ("{", "[")
                                             and len(source) < 4096):
        source = read_text(source, "trace file" if not isinstance(source, bytes) else "the trace", MAX_TRACE_BYTES)
    try:
        obj = json.loads(source)
    except json.JSONDecodeError as err:
        raise ValueError(f"the trace is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}") from None
    if isinstance(obj, dict) and obj.get("schema") != TRACE_SCHEMA:
        if isinstance(obj.get("trace"), dict):
            obj = obj["trace"]
        elif isinstance(obj.get("traces"), list):
            traces = obj["traces"]
            if index is None or not 0 <= index < len(traces):
                raise ValueError(f"the file holds {len(traces)} traces; pick one with an index from 0 to {len(traces) - 1}")
            obj = traces[index]
    return validate_trace(obj)


# the diff -------------------------------------------------------------------------------------------

def _top(weights: dict[str, float], axes: Sequence[str]) -> str:
    return max(axes, key=lambda a: weights[a])


def flat_settings(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested settings as {"a.b": value} (for saying which settings two runs differ in)."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flat_settings(item, f"{prefix}.{key}" if prefix else key))
        return out
    return {prefix: value}


def settings_changed(a: Any, b: Any) -> dict[str, list[Any]]:
    """{"a.b": [value in a, value in b]} for each flattened setting that differs between two runs."""
    flat_a, flat_b = flat_settings(a), flat_settings(b)
    return {k: [flat_a.get(k), flat_b.get(k)] for k in sorted(set(flat_a) | set(flat_b)) if flat_a.get(k) != flat_b.get(k)}


def _describe(trace: dict[str, Any]) -> dict[str, Any]:
    tokens = trace["tokens"]
    return {"prompt": trace["prompt"], "model": trace["model"], "settings": trace["settings"], "tokens": len(tokens),
            "prompt_tokens": sum(t["is_prompt"] for t in tokens), "finish_reason": trace["finish_reason"], "text": trace["text"]}


def _side(tokens: list[dict[str, Any]], start: int, end: int) -> dict[str, Any]:
    part = tokens[start:end]
    return {"start": start, "end": end, "positions": [part[0]["position"], part[-1]["position"]] if part else None,
            "ids": [t["id"] for t in part], "text": "".join(t["text"] for t in part)}


def align_tokens(ids_a: list[int], ids_b: list[int]) -> tuple[int, list[tuple[int, int]], list[tuple[str, int, int, int, int]]]:
    """(common prefix length, aligned index pairs (i in a, j in b), divergent spans (kind, a start, a end, b start,
    b end)): the common prefix first, then `difflib.SequenceMatcher` (no junk heuristic) on the rest, so two runs
    that part and meet again align on both sides of every difference. Kinds: "replaced", "only_a", "only_b"."""
    n = 0
    while n < min(len(ids_a), len(ids_b)) and ids_a[n] == ids_b[n]:
        n += 1
    pairs = [(i, i) for i in range(n)]
    spans = []
    kinds = {"replace": "replaced", "delete": "only_a", "insert": "only_b"}
    for tag, i1, i2, j1, j2 in SequenceMatcher(None, ids_a[n:], ids_b[n:], autojunk=False).get_opcodes():
        if tag == "equal":
            pairs += [(n + i1 + k, n + j1 + k) for k in range(i2 - i1)]
        else:
            spans.append((kinds[tag], n + i1, n + i2, n + j1, n + j2))
    return n, pairs, spans


def diff_traces(a: Any, b: Any) -> dict[str, Any]:
    """Compare two traces token by token (both are validated first).

    The token ids are aligned (`align_tokens`): the common prefix, then a sequence alignment of the rest, so
    runs that part and meet again are compared on every token they share, and each stretch where they differ
    is a `divergences` entry (its kind, and per trace the token indices [start, end), the first and last
    position, ids and text). `first_divergence` is the first index where the ids differ (or where one
    trace ends), None when both are the same length and agree throughout. For each aligned token: its
    index and position in each trace, both weight rows, `delta` = b − a per axis, the largest per-layer
    difference (when both have the same layer count), both top experts and whether they differ. Returns
    plain JSON-able data:

        {"schema": "alignx-trace-diff/1", "axes", "a": {prompt, model, settings, tokens, prompt_tokens,
         finish_reason, text}, "b": {…}, "same_prompt", "settings_changed": {path: [a, b]},
         "aligned": n, "aligned_prefix": n, "first_divergence": {index, position, is_prompt_a, is_prompt_b,
         a: {id, text} | None, b: {…} | None} | None,
         "divergences": [{kind: "replaced" | "only_a" | "only_b", in_prompt, a: {start, end, positions: [first,
         last] | None, ids, text}, b: {…}}],
         "tokens": [{index, index_b, position, position_b, after_divergence, is_prompt, id, text, a, b, delta,
         max_abs_delta, max_layer_abs_delta, top_a, top_b, routed_differs}], "routed_differs": [index…],
         "summary": {mean_abs_delta{axis}, max_abs_delta, n_routed_differs, share_routed_differs,
         generated_aligned, layer_mean_abs_delta (L × K) | None, n_divergences, tokens_only_a, tokens_only_b},
         "notes": [sentence…]}

    `aligned` counts every aligned token, `aligned_prefix` those before the first divergence; `index` and
    `position` are the token's in a, `index_b` and `position_b` in b (they differ after a divergence whose
    two sides have different lengths).
    """
    a, b = validate_trace(a), validate_trace(b)
    if a["axes"] != b["axes"]:
        raise ValueError(f"the traces route over different axes ({', '.join(a['axes'])} and {', '.join(b['axes'])}), "
                         "so their weights cannot be compared")
    ta, tb = a["tokens"], b["tokens"]
    notes: list[str] = []
    same_layers = bool(ta and tb) and len(ta[0]["layers"]) == len(tb[0]["layers"])
    if ta and tb and not same_layers:
        notes.append(f"the traces have {len(ta[0]['layers'])} and {len(tb[0]['layers'])} layers: per-layer differences left out")
    n, pairs, raw_spans = align_tokens([t["id"] for t in ta], [t["id"] for t in tb])
    divergence = None
    if n < max(len(ta), len(tb)):
        side = lambda ts: {"id": ts[n]["id"], "text": ts[n]["text"]} if n < len(ts) else None  # noqa: E731
        divergence = {"index": n, "position": (ta if n < len(ta) else tb)[n]["position"],
                      "is_prompt_a": ta[n]["is_prompt"] if n < len(ta) else None,
                      "is_prompt_b": tb[n]["is_prompt"] if n < len(tb) else None, "a": side(ta), "b": side(tb)}
    spans = [{"kind": kind, "in_prompt": any(t["is_prompt"] for t in ta[i1:i2] + tb[j1:j2]),
              "a": _side(ta, i1, i2), "b": _side(tb, j1, j2)} for kind, i1, i2, j1, j2 in raw_spans]
    if divergence is not None:
        where = "in the prompt" if spans[0]["in_prompt"] else "in the generation"
        after = len(pairs) - n
        notes.append(f"the token sequences diverge at index {n} ({where}) and differ in {len(spans)} stretch(es) "
                     f"({sum(s['a']['end'] - s['a']['start'] for s in spans)} tokens only in a, "
                     f"{sum(s['b']['end'] - s['b']['start'] for s in spans)} only in b); "
                     + (f"they meet again, and {after} tokens after the first divergence are aligned and compared too"
                        if after else f"they do not meet again: only the first {n} tokens are compared"))
    rows, differs, summary = _compare_aligned(ta, tb, pairs, n, same_layers, a["axes"])
    summary |= {"n_divergences": len(spans), "tokens_only_a": sum(s["a"]["end"] - s["a"]["start"] for s in spans),
                "tokens_only_b": sum(s["b"]["end"] - s["b"]["start"] for s in spans)}
    m = len(rows)
    return {"schema": "alignx-trace-diff/1", "axes": list(a["axes"]), "a": _describe(a), "b": _describe(b),
            "same_prompt": a["prompt"] == b["prompt"], "settings_changed": settings_changed(a["settings"], b["settings"]),
            "aligned": m, "aligned_prefix": n, "first_divergence": divergence, "divergences": spans, "tokens": rows,
            "routed_differs": differs, "summary": summary, "notes": notes}


def _compare_aligned(ta: list[dict[str, Any]], tb: list[dict[str, Any]], pairs: list[tuple[int, int]], n: int,
                     same_layers: bool, axes: Sequence[str]) -> tuple[list[dict[str, Any]], list[int], dict[str, Any]]:
    """Per aligned token pair: both weight rows, their differences and top experts; and their summary."""
    rows, differs = [], []
    layer_sums = [[0.0] * len(axes) for _ in range(len(ta[0]["layers"]))] if same_layers else None
    for i, j in pairs:
        x, y = ta[i], tb[j]
        delta = {ax: round(y["weights"][ax] - x["weights"][ax], 6) for ax in axes}
        layer_max = None
        if same_layers:
            diffs = [[abs(q - p) for p, q in zip(rx, ry)] for rx, ry in zip(x["layers"], y["layers"])]
            layer_max = round(max(max(r) for r in diffs), 6)
            for l, r in enumerate(diffs):
                layer_sums[l] = [s + d for s, d in zip(layer_sums[l], r)]
        top_a, top_b = _top(x["weights"], axes), _top(y["weights"], axes)
        if top_a != top_b:
            differs.append(i)
        rows.append({"index": i, "index_b": j, "position": x["position"], "position_b": y["position"],
                     "after_divergence": i >= n, "is_prompt": x["is_prompt"] and y["is_prompt"], "id": x["id"],
                     "text": x["text"], "a": x["weights"], "b": y["weights"], "delta": delta,
                     "max_abs_delta": max(abs(v) for v in delta.values()), "max_layer_abs_delta": layer_max,
                     "top_a": top_a, "top_b": top_b, "routed_differs": top_a != top_b})
    m = len(rows)
    summary = {
        "mean_abs_delta": {ax: round(sum(abs(r["delta"][ax]) for r in rows) / m, 6) if m else None for ax in axes},
        "max_abs_delta": max((r["max_abs_delta"] for r in rows), default=None),
        "n_routed_differs": len(differs),
        "share_routed_differs": round(len(differs) / m, 6) if m else None,
        "generated_aligned": sum(not r["is_prompt"] for r in rows),
        "layer_mean_abs_delta": [[round(v / m, 6) for v in row] for row in layer_sums] if (layer_sums and m) else None,
    }
    return rows, differs, summary


# the table of docs/traces.md --------------------------------------------------------------------------

def _type_words(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        return "weights object" if schema["$ref"].endswith("weights") else "token object"
    if "const" in schema:
        return f"`{json.dumps(schema['const'])}`"
    if "enum" in schema:
        return " \\| ".join(f"`{json.dumps(e)}`" for e in schema["enum"])
    kind = schema.get("type", "")
    return " or ".join(kind) if isinstance(kind, list) else kind


def schema_markdown() -> str:
    """The trace format as Markdown tables (top-level fields, then token fields), from TRACE_JSON_SCHEMA."""
    def table(schema: dict[str, Any]) -> list[str]:
        lines = ["| field | type | required | meaning |", "|---|---|---|---|"]
        for name, prop in schema["properties"].items():
            required = "yes" if name in schema.get("required", []) else "no"
            lines.append(f"| `{name}` | {_type_words(prop)} | {required} | {prop.get('description', '')} |")
        return lines

    token = TRACE_JSON_SCHEMA["$defs"]["token"]
    return "\n".join([f"Trace (`\"schema\": \"{TRACE_SCHEMA}\"`):", "", *table(TRACE_JSON_SCHEMA), "",
                      "Each entry of `tokens`:", "", *table(token), "",
                      (f"A weights object has one key per name in `axes` ({', '.join(f'`{a}`' for a in AXES)} for the "
                       "HHH bundle), numbers in [0, 1] summing to 1.")])
