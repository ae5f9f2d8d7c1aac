"""Your own labelled prompts as training data for the routers and the calibration (`train router|calibrate
--prompts FILE`), instead of the project's HHH sources, labelled with the checkpoint's axes (its
`MoCaEConfig.axes`: the HHH three, or your own experts' names). It lives with training, not in `data/`, because it
reads the file with the reader `analyze` uses (`analysis.prompt_files`).

The file is read as `analyze` reads one (`analysis.prompt_files.parse_prompt_file`: CSV, JSONL or JSON; a
`prompt` column, an `axis` label, any other columns kept), with the same one-sentence errors for bad rows; a
row must name its axis here, and may carry a `response` (the answer the routers are trained through, with
the LM loss; without one the row teaches routing on the prompt alone). Every row is split by the hash of its
normalised prompt into train / calibration / eval (80/10/10, `records.split_of`), as the project's data is:
the routers train on the train rows, the calibration is fitted on the calibration rows, and the eval rows
are left for `analyze`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from alignx_demo.analysis.prompt_files import parse_prompt_file
from alignx_demo.config import AXES
from alignx_demo.data.records import AxisExample, normalize_key, split_of


class LabelsError(ValueError):
    """A labelled prompt file that cannot train routers (one sentence)."""


def labelled_examples(path: str | Path, axes: Sequence[str] = AXES) -> tuple[list[AxisExample], list[str]]:
    """(examples, problems): one `AxisExample` per usable row labelled with one of `axes` (the checkpoint's;
    source "user" or the row's `source` column), and one sentence per row left out. Raises `LabelsError` when
    the file is unreadable or leaves an axis without a train row."""
    try:
        rows, problems = parse_prompt_file(Path(path), axes=axes)
    except ValueError as err:
        raise LabelsError(str(err)) from None
    examples = []
    for row in rows:
        if row["axis"] is None:
            problems.append(f"row {row['row']}: no axis label (training needs one of {', '.join(axes)})")
            continue
        extra = row["extra"]
        examples.append(AxisExample(f"user:{row['row']}", row["axis"], row["prompt"], extra.get("response", ""),
                                    extra.get("source", "user"), split_of(normalize_key(row["prompt"])), dict(extra)))
    missing = [axis for axis in axes if not any(e.axis == axis and e.split == "train" for e in examples)]
    if missing:
        raise LabelsError(f"{Path(path).name} has no train-split row labelled {', '.join(missing)} (of {len(examples)} "
                          "labelled rows, 80 % are train rows by the hash of the prompt): add rows for every axis")
    return examples, problems
