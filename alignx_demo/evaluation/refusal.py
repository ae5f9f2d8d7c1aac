"""A documented refusal detector: a response refuses when its first 200 characters contain one of
the refusal phrases below (case-insensitive), in the spirit of the string matching used by
XSTest's and AdvBench's automatic evaluations. `detector_agreement` validates it against XSTest's
human-labelled completions (full or partial refusal = refusal).
"""

from __future__ import annotations

from collections.abc import Iterable

from alignx_demo.data.behaviour import REFUSAL_PHRASES, is_refusal, rate
from alignx_demo.data.records import AxisExample

__all__ = ["REFUSAL_PHRASES", "detector_agreement", "is_refusal", "refusal_rate"]


def refusal_rate(responses: Iterable[str]) -> float:
    return rate(is_refusal(r) for r in responses)


def detector_agreement(completions: list[AxisExample]) -> dict[str, float]:
    """Agreement of `is_refusal` with XSTest's human labels (final_label 2 or 3 = refusal)."""
    if not completions:
        return {"n": 0, "agreement": float("nan")}
    human = [c.meta.get("final_label", "").startswith(("2", "3")) for c in completions]
    ours = [is_refusal(c.response) for c in completions]
    agree = sum(h == o for h, o in zip(human, ours))
    tp = sum(h and o for h, o in zip(human, ours))
    return {
        "n": len(completions),
        "agreement": agree / len(completions),
        "precision": tp / max(sum(ours), 1),
        "recall": tp / max(sum(human), 1),
    }
