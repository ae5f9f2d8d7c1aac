"""AlignX Demo: `python app.py [--model DIR] [--compare-model DIR] [--base-model ID] [--no-4bit] [--host H] [--port P]`.

Every option also has an environment variable (ALIGNX_MODEL, ALIGNX_BASE_MODEL, ALIGNX_NO_4BIT,
ALIGNX_HOST, ALIGNX_PORT, ALIGNX_PRECOMPUTED, ALIGNX_COMPARE_MODEL, and for the limits ALIGNX_QUEUE_SIZE, ALIGNX_CONCURRENCY,
ALIGNX_REQUEST_SECONDS, ALIGNX_MAX_NEW_TOKENS, ALIGNX_MAX_PROMPT_CHARS, ALIGNX_MAX_ANALYSIS_ROWS); on a
Hugging Face Space (SPACE_ID set) the app listens on 0.0.0.0.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import asdict, fields
from pathlib import Path

from alignx_demo.analysis.artefacts import DEFAULT_DIR
from alignx_demo.serving import (
    LIMIT_HELP, LIMIT_VARIABLES, Limits, ServerOptions, load_comparison, load_context, port_problem,
)
from alignx_demo.ui.app import LAUNCH_KWARGS, build_demo


def parse_args() -> tuple[ServerOptions, Path]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    try:
        defaults = ServerOptions.from_env()
    except ValueError as err:
        parser.error(str(err))
    parser.add_argument("--model", type=Path, default=defaults.model, help="MoCaE checkpoint folder")
    parser.add_argument("--base-model", default=defaults.base_model, help="hub id or path of the base, instead of MODEL/base")
    parser.add_argument("--no-4bit", dest="load_in_4bit", action="store_false", default=defaults.load_in_4bit)
    parser.add_argument("--trust-remote-code", action="store_true", default=defaults.trust_remote_code)
    parser.add_argument("--host", default=defaults.host)
    parser.add_argument("--port", type=int, default=defaults.port)
    parser.add_argument("--compare-model", type=Path, default=defaults.compare_model,
                        help="a second MoCaE checkpoint the Routing analysis tab compares the served one with (ALIGNX_COMPARE_MODEL)")
    parser.add_argument("--precomputed", type=Path, default=Path(os.environ.get("ALIGNX_PRECOMPUTED", DEFAULT_DIR)),
                        help="folder of precomputed artefacts (default precomputed/)")
    for f in fields(Limits):
        default = getattr(defaults.limits, f.name)
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(default), default=default,
                            help=f"{LIMIT_HELP[f.name]} ({LIMIT_VARIABLES[f.name]}; default {default:g})")
    args = vars(parser.parse_args())
    precomputed = args.pop("precomputed")
    try:
        limits = Limits(**{name: args.pop(name) for name in asdict(defaults.limits)})
    except ValueError as err:
        parser.error(str(err))
    return ServerOptions(**args, limits=limits), precomputed


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    options, precomputed = parse_args()
    if problem := port_problem(options.host, options.port):  # before the model loads: one sentence, no traceback
        print(problem, file=sys.stderr)
        raise SystemExit(2)
    context = load_context(options)
    demo = build_demo(context, precomputed, against=load_comparison(options))
    demo.launch(server_name=options.host, server_port=options.port, share=False, **LAUNCH_KWARGS)


if __name__ == "__main__":
    main()
