"""Reading a user's file (a path, or the bytes of an upload) as text, with a size limit and clear errors."""

from __future__ import annotations

from pathlib import Path


def read_text(source: str | Path | bytes, what: str, max_bytes: int) -> str:
    """The UTF-8 text (a BOM dropped) of a file path or of bytes; ValueError naming `what` when the
    file is missing, larger than `max_bytes`, or not UTF-8."""
    if not isinstance(source, bytes):
        path = Path(source)
        if not path.is_file():
            raise ValueError(f"{what} not found: {path}")
        if path.stat().st_size > max_bytes:
            raise ValueError(f"{what} {path} is larger than {max_bytes / 1e6:g} MB")
        source = path.read_bytes()
    if len(source) > max_bytes:
        raise ValueError(f"{what} is larger than {max_bytes / 1e6:g} MB")
    try:
        return source.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"{what} is not UTF-8 text (byte {err.start} cannot be read)") from None
