"""Library warnings that every command would print, each condensed to one plain line, at most once a process.

The one place these are filtered (installed by `import alignx_demo`; `quiet_libraries()` is idempotent):
- bitsandbytes' "Failed to load CPU gemm_4bit_forward from kernels-community …" (logged at its import when
  the optional `kernels` package is absent): 4-bit then runs on bitsandbytes' own CPU code, as this project
  expects, so one INFO line replaces it (the app's log shows it; the command line does not);
- transformers' "Token indices sequence length is longer than the specified maximum sequence length …"
  (logged once per tokenizer, i.e. per model loaded): generation and the research tools cut prompts to the
  model's context themselves and say so in their notices, so one WARNING line replaces it, once a process.

Only these two messages are touched: every other warning and every error passes unchanged. On the command
line Python's own warnings (a library's FutureWarning, …) are also printed on one line each
(`one_line_warnings`, installed by `cli.main`; Python already shows each once per place).
"""

from __future__ import annotations

import logging
import warnings
from typing import ClassVar

log = logging.getLogger("alignx_demo")

KERNELS_WARNING = ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward from kernels-community")
"""Logger and message start of the warning bitsandbytes logs on every import where the optional `kernels`
package is absent: 4-bit then runs on bitsandbytes' own CPU code, which is what this project expects."""
LENGTH_WARNING = ("transformers.tokenization_utils_base", "Token indices sequence length is longer than the specified")
"""Logger and message start of transformers' warning about a text longer than the tokenizer's model_max_length."""
REPLACEMENTS = {
    KERNELS_WARNING: (logging.INFO, ("bitsandbytes: the optional `kernels` package is not installed; 4-bit layers use "
                                     "bitsandbytes' built-in CPU code")),
    LENGTH_WARNING: (logging.WARNING, ("transformers: a text is longer than the model's context; prompts are cut from "
                                       "the left to fit, and each run's notices say so (shown once)")),
}


class OneLine(logging.Filter):
    """Drops one library message and logs its one-line replacement in its place, once per process."""

    said: ClassVar[set[tuple[str, str]]] = set()

    def __init__(self, key: tuple[str, str]) -> None:
        super().__init__()
        self.key = key

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.getMessage().startswith(self.key[1]):
            return True
        if self.key not in OneLine.said:
            OneLine.said.add(self.key)
            level, line = REPLACEMENTS[self.key]
            log.log(level, line)
        return False


def quiet_libraries() -> None:
    """Install the one-line filters (idempotent; before the libraries log, i.e. before bitsandbytes is imported)."""
    for key in REPLACEMENTS:
        logger = logging.getLogger(key[0])
        if not any(isinstance(f, OneLine) and f.key == key for f in logger.filters):
            logger.addFilter(OneLine(key))


def format_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int, line: str | None = None) -> str:
    """A Python warning on one line: `warning: Category: message (file:line)`."""
    text = " ".join(str(message).split())
    return f"warning: {category.__name__}: {text} ({filename.rsplit('/', 1)[-1]}:{lineno})\n"


def one_line_warnings() -> None:
    """Print Python's warnings on one line each (`format_warning`) — for the command line; a notebook keeps its own."""
    warnings.formatwarning = format_warning
