"""The page's Stop buttons: one stop signal per browser session and tab.

A tab's run button first arms a fresh signal (`arm`), its run reads it (`signal_of`) and gives it up
when it ends (`release`); Stop sets it. Keyed by (session, tab), so Stop on one tab never ends
another tab's run. API callers have no signal: they stop a run by cancelling their job.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

import gradio as gr

_SIGNALS: dict[tuple[str, str], threading.Event] = {}
T = TypeVar("T")


def _key(request: gr.Request | None, tab: str) -> tuple[str, str] | None:
    session = getattr(request, "session_hash", None)
    return (session, tab) if session else None


def arm(request: gr.Request | None, tab: str) -> None:
    """A fresh stop signal for this session's next run on `tab`."""
    key = _key(request, tab)
    if key is not None:
        _SIGNALS[key] = threading.Event()


def signal_of(request: gr.Request | None, tab: str) -> threading.Event | None:
    """The signal armed for this session's run on `tab` (None for API callers)."""
    key = _key(request, tab)
    return _SIGNALS.get(key) if key else None


def release(request: gr.Request | None, tab: str, signal: threading.Event | None) -> None:
    """Forget `signal` once its run has ended (unless a newer run armed another)."""
    key = _key(request, tab)
    if key is not None and signal is not None and _SIGNALS.get(key) is signal:
        del _SIGNALS[key]


def guarded(request: gr.Request | None, tab: str, run: Callable[[threading.Event | None], Iterator[T]]) -> Iterator[T]:
    """`run(signal)` with this session's signal on `tab`, given up when the run ends however it ends."""
    signal = signal_of(request, tab)
    try:
        yield from run(signal)
    finally:
        release(request, tab, signal)


def stop(request: gr.Request | None, tab: str) -> None:
    """Stop: set the session's signal on `tab` (a no-op when nothing runs there)."""
    signal = signal_of(request, tab)
    if signal is not None:
        signal.set()


def stopper(tab: str) -> Callable[[gr.Request], None]:
    """The handler of a Stop button on `tab` (Gradio passes the request by its annotation)."""
    def stop_click(request: gr.Request) -> None:
        stop(request, tab)

    return stop_click


def arming(tab: str) -> Callable[[gr.Request], None]:
    """The handler that arms `tab`'s signal before its run starts."""
    def arm_click(request: gr.Request) -> None:
        arm(request, tab)

    return arm_click


def active() -> int:
    """How many runs hold a signal (tests check that every run gives its signal up)."""
    return len(_SIGNALS)
