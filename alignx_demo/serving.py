"""What the app serves: the loaded model, or a clear account of why none could be loaded.

Model locations come only from the operator (command line or environment), never from a page or
an API call.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from alignx_demo.modeling.checkpoint import CheckpointError, LoadedModel, load_mocae
from alignx_demo.modeling.families import UnsupportedModelError

log = logging.getLogger(__name__)

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "assets" / "demo-model"
HOW_TO_GET_ONE = (
    "Train the bundled demo model with `python -m alignx_demo train all --data-dir ../shared/data "
    "--out assets/demo-model`, or start the app with `--model DIR` (or ALIGNX_MODEL=DIR) pointing to a "
    "MoCaE checkpoint folder."
)


@dataclass
class ServerOptions:
    """Operator settings; each has an environment variable so a Space can set it."""

    model: Path = DEFAULT_MODEL
    base_model: str | None = None
    load_in_4bit: bool = True
    trust_remote_code: bool = False
    host: str = "127.0.0.1"
    port: int = 7860

    @classmethod
    def from_env(cls) -> ServerOptions:
        env = os.environ
        host = env.get("ALIGNX_HOST") or ("0.0.0.0" if env.get("SPACE_ID") else None)
        return cls(
            model=Path(env.get("ALIGNX_MODEL", str(DEFAULT_MODEL))),
            base_model=env.get("ALIGNX_BASE_MODEL") or None,
            load_in_4bit=env.get("ALIGNX_NO_4BIT", "") not in ("1", "true", "yes"),
            trust_remote_code=env.get("ALIGNX_TRUST_REMOTE_CODE", "") in ("1", "true", "yes"),
            host=host or env.get("GRADIO_SERVER_NAME") or "127.0.0.1",
            port=int(env.get("ALIGNX_PORT") or env.get("GRADIO_SERVER_PORT") or 7860),
        )


@dataclass
class ModelContext:
    """The model the app serves (None when loading failed) and what to tell visitors about it."""

    loaded: LoadedModel | None
    problem: str | None = None
    notices: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.loaded.description if self.loaded else "no model loaded"


def load_context(options: ServerOptions) -> ModelContext:
    """Load the operator's model; on failure keep serving and say what is wrong and what to do."""
    if not options.model.exists() and options.model == DEFAULT_MODEL:
        return ModelContext(None, f"The bundled demo model is not at {options.model}. {HOW_TO_GET_ONE}")
    try:
        loaded = load_mocae(
            options.model,
            load_in_4bit=options.load_in_4bit,
            trust_remote_code=options.trust_remote_code,
            base_model=options.base_model,
        )
    except (CheckpointError, UnsupportedModelError, ValueError) as err:
        log.error("model not loaded: %s", err)
        return ModelContext(None, f"The model could not be loaded: {err}. {HOW_TO_GET_ONE}")
    return ModelContext(loaded, None, list(loaded.notices))
