"""The precomputed artefacts the app shows, how they are written and how the app reads them.

`precomputed/` holds (each JSON with "version", "command", "created", "model", "model_path",
"model_fingerprint": which model, where, and the command that built the file):

    map.json                    per regime: 2-D coordinates of the map prompts, axis, hover text, the
                                regime's sentence, misrouted marks (MoCaE), the representation and
                                projection used (umap | pca)
    map_features.safetensors    per regime: the chosen representation's features (N, D) fp16 of the
                                same points, for placing a visitor's prompt by its nearest neighbours
                                (metadata: version, model fingerprint and path, command, representation)
    collapse_metrics.json       per regime: silhouette, kNN axis purity, contrast with its reference
                                regime, routing accuracy (MoCaE), forgetting (sequential SFT, when
                                measured), sentence; the measurement table of every representation
    reliability.json            reliability-diagram bins and routing metrics, calibrated and uncalibrated
    example_traces.json         routed generations of a few example prompts
    routing_analysis.json       `failures.analyze_prompts` of the map prompts (written for this project),
                                calibrated and uncalibrated: the held-out slices the Routing analysis tab
                                shows without any model work
    answers.json                what the answers are worth (`analysis.answers`): per preset and prompt axis,
                                how often the greedy answers to the map prompts are on topic, refuse, hedge
    stories.json                the first-visit stories (`analysis.stories`): per story the prompt, its
                                runs (full traces) and the sentence computed from what they did

A missing, unreadable or stale (other `ARTEFACT_VERSION`) file is reported as a notice; the app
shows the notice in the tab that needs the file and serves everything else.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from alignx_demo.config import BASELINES

ARTEFACT_VERSION = 2
DEFAULT_DIR = Path(__file__).resolve().parent.parent.parent / "precomputed"
FILES = {
    "map": "map.json",
    "collapse": "collapse_metrics.json",
    "reliability": "reliability.json",
    "examples": "example_traces.json",
    "analysis": "routing_analysis.json",
    "stories": "stories.json",
    "answers": "answers.json",
}
FEATURES_FILE = "map_features.safetensors"
HOW_TO_BUILD = "python -m alignx_demo precompute --model MODEL_DIR --data-dir ../shared/data"


def model_fingerprint(model_dir: str | Path) -> str:
    """A short hash of the checkpoint's small files: config, routers, calibration, experts, the base's
    config and the baseline adapters (the Axis Collapse regimes run them)."""
    model_dir = Path(model_dir)
    digest = hashlib.sha256()
    names = ["mocae_config.json", "router.safetensors", "calibration.safetensors", "base/config.json"]
    names += [f"experts/{a}/adapter_model.safetensors" for a in ("helpful", "harmless", "honest")]
    names += [f"baselines/{b}/{f}" for b in BASELINES for f in ("adapter_config.json", "adapter_model.safetensors")]
    for name in names:
        path = model_dir / name
        if path.exists():
            digest.update(name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


class ProvenanceError(ValueError):
    """Figures computed from one model would be stamped with another model's fingerprint."""


def check_provenance(source: dict[str, Any], fingerprint: str, model_dir: str | Path, what: str) -> None:
    """Raise ProvenanceError unless `source` (a report read from disk) names the model `fingerprint`."""
    found = source.get("model_fingerprint") if isinstance(source, dict) else None
    if not found:
        raise ProvenanceError(
            f"{what} carries no model fingerprint, so nothing says it was computed from {model_dir} "
            f"(fingerprint {fingerprint}); its figures will not be stamped with that model. Re-run "
            f"`python -m alignx_demo evaluate --model {model_dir} ...` or leave the report out."
        )
    if found != fingerprint:
        raise ProvenanceError(
            f"{what} was computed from model {found} ({source.get('model_dir') or source.get('model') or 'path unknown'}), "
            f"not from {model_dir} (fingerprint {fingerprint}); its figures will not be stamped with that model. "
            f"Evaluate {model_dir} again or pass the report of that model."
        )


def header(command: str, model: str, model_dir: str | Path, fingerprint: str) -> dict[str, Any]:
    return {
        "version": ARTEFACT_VERSION,
        "command": command,
        "created": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "model": model,
        "model_path": str(model_dir),
        "model_fingerprint": fingerprint,
    }


def write_json(folder: Path, key: str, data: dict[str, Any]) -> Path:
    path = folder / FILES[key]
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False))
    return path


@dataclass
class Artefacts:
    """What the app read from `precomputed/`: data per artefact (None when unusable) and notices."""

    folder: Path
    data: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    features: dict[str, torch.Tensor] = field(default_factory=dict)
    notices: dict[str, str] = field(default_factory=dict)

    def get(self, key: str) -> dict[str, Any] | None:
        return self.data.get(key)

    def notice(self, *keys: str) -> str | None:
        found = [self.notices[k] for k in keys if k in self.notices]
        return " ".join(found) if found else None


def load_artefacts(folder: str | Path | None = None) -> Artefacts:
    """Read every artefact; never raises for a missing or broken file (it becomes a notice)."""
    folder = Path(folder) if folder else DEFAULT_DIR
    out = Artefacts(folder)
    for key, name in FILES.items():
        path = folder / name
        if not path.exists():
            out.data[key] = None
            out.notices[key] = f"Precomputed file missing: {path}. Build it with `{HOW_TO_BUILD}`."
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            out.data[key] = None
            out.notices[key] = f"Precomputed file unreadable: {path} ({err}). Rebuild it with `{HOW_TO_BUILD}`."
            continue
        if not isinstance(data, dict) or data.get("version") != ARTEFACT_VERSION:
            version = data.get("version") if isinstance(data, dict) else None
            out.data[key] = None
            out.notices[key] = (
                f"Precomputed file is stale: {path} has version {version!r}, this app reads version "
                f"{ARTEFACT_VERSION}. Rebuild it with `{HOW_TO_BUILD}`."
            )
            continue
        out.data[key] = data
    path = folder / FEATURES_FILE
    if out.data.get("map") is not None:
        try:
            from safetensors import safe_open

            with safe_open(str(path), "pt") as handle:
                meta = handle.metadata() or {}
                if meta.get("version") != str(ARTEFACT_VERSION):
                    raise ValueError(f"version {meta.get('version')!r}, expected {ARTEFACT_VERSION}")
                made = out.data["map"]
                for key, want in (("model_fingerprint", made.get("model_fingerprint")),
                                  ("representation", made.get("feature", {}).get("representation"))):
                    if meta.get(key) != want:
                        raise ValueError(f"{key} {meta.get(key)!r} differs from map.json's {want!r}")
                out.features = {k: handle.get_tensor(k).float() for k in handle.keys()}
        except Exception as err:  # missing or corrupt file: placement is off, the map still shows
            out.notices["features"] = (
                f"Map features unusable ({path}: {err}); your prompt cannot be placed on the map. "
                f"Rebuild with `{HOW_TO_BUILD}`."
            )
    return out
