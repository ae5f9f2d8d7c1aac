"""Whether a checkpoint's routers and calibration were trained — so a loader can refuse ones that were not.

The marker: the safetensors metadata key `alignx_trained` (JSON), written by the stage that trained
the file — `train router` into router.safetensors ({"stage": "router", …}), `train calibrate` into
calibration.safetensors ({"stage": "calibrate", "router": the fingerprint of the routers it was fitted
for, …}).

`untrained_problem` says, in one sentence naming the command to rerun, what is wrong:
- routers without the marker whose weights are all zero: the initial uniform 1/3 routing (the
  experts stage and `import-experts` write such routers; a failed `train router` used to leave
  them). Routers without the marker but with weights — the bundled demo model and other checkpoints
  written before the marker existed, `save_mocae` of a model in memory — are taken as trained;
- calibration whose marker names other routers than the ones beside it (fitted before the routers
  were retrained), or calibration without the marker next to routers with one (a router retraining
  deletes the calibration, so that calibration was not fitted for these routers). Calibration without
  the marker next to routers without one is an older checkpoint's and is taken as fitted.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

ROUTER_FILE = "router.safetensors"
CALIBRATION_FILE = "calibration.safetensors"
TRAINED_KEY = "alignx_trained"


def fingerprint(tensors: dict[str, torch.Tensor]) -> str:
    """A short SHA-256 of the tensors' names, shapes and float32 values (independent of file metadata)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        value = tensors[name].detach().float().cpu().contiguous()
        digest.update(f"{name}:{tuple(value.shape)};".encode())
        digest.update(value.numpy().tobytes())
    return digest.hexdigest()[:16]


def trained_metadata(stage: str, **info: Any) -> dict[str, str]:
    """The safetensors metadata entry that marks a file as written by a finished training stage."""
    return {TRAINED_KEY: json.dumps({"stage": stage, **info}, sort_keys=True)}


def read_marker(path: Path) -> dict[str, Any] | None:
    """The `alignx_trained` marker of a safetensors file, or None (no marker, or an unreadable file:
    the loader's own checks name that)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as handle:
            value = (handle.metadata() or {}).get(TRAINED_KEY)
        marker = json.loads(value) if value else None
    except Exception:  # noqa: BLE001 — corrupt files are reported by the loader's own reads
        return None
    return marker if isinstance(marker, dict) else None


def _read(path: Path) -> dict[str, torch.Tensor] | None:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception:  # noqa: BLE001 — corrupt files are reported by the loader's own reads
        return None


def untrained_problem(folder: str | Path) -> str | None:
    """One sentence saying why the checkpoint in `folder` must not be served — routers never trained, or
    calibration not fitted for its routers — with the command to rerun; None when it may be."""
    folder = Path(folder)
    router_path, calibration_path = folder / ROUTER_FILE, folder / CALIBRATION_FILE
    routers = _read(router_path) if router_path.exists() else None
    if routers is None:
        return None  # missing or corrupt: the loader names the file
    router_marker = read_marker(router_path)
    if router_marker is None and all(not bool(t.any()) for t in routers.values()):
        return (f"{router_path} holds routers that were never trained (every weight 0, uniform 1/3 routing): run "
                f"`python -m alignx_demo train router --out {folder}` (then `train calibrate`) before using this checkpoint")
    if not calibration_path.exists():
        return None
    calibration_marker = read_marker(calibration_path)
    rerun = f"run `python -m alignx_demo train calibrate --out {folder}` (or delete it to route uncalibrated)"
    if calibration_marker is None and router_marker is not None:
        return f"{calibration_path} was not fitted by `train calibrate` for the routers beside it: {rerun}"
    if calibration_marker is not None and calibration_marker.get("router") != fingerprint(routers):
        return f"{calibration_path} was fitted for other routers than the ones in {router_path}: {rerun}"
    return None
