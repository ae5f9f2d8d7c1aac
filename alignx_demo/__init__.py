"""AlignX Demo: Mixture of Calibrated Experts (MoCaE) along the HHH axes.

In a Python session (a notebook): `Session(model_dir)` loads a model once and runs generate, analyze,
compare, attribute, settle and diff on it (`alignx_demo.session`; the command line wraps the same calls).
"""

from typing import Any

from alignx_demo.config import AXES
from alignx_demo.quiet import quiet_libraries

quiet_libraries()  # library warnings every command would print, one line each (see `alignx_demo.quiet`)

__all__ = ["AXES", "Session", "load"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """`Session` and `load` on first use, so `import alignx_demo` stays light (no torch until a model is wanted)."""
    if name in ("Session", "load"):
        from alignx_demo import session

        return getattr(session, name)
    raise AttributeError(f"module 'alignx_demo' has no attribute {name!r}")
