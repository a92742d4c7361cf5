"""Turn SIGTERM / Ctrl+C (and Ctrl+Break on Windows) into calls of a stop callback."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import Callable, Mapping
from types import FrameType
from typing import Any

# One stop can arrive twice within microseconds: `systemctl stop` (KillMode=control-group) or
# `pkill` may signal the agent and a wrapper that forwards its own copy (a shell, a service
# helper), and some terminals deliver Ctrl+C twice. Deliveries this close count as one,
# so the second signal that means "stop at once" is a second press, not an echo of the first.
REPEAT_WINDOW_S = 0.5


def install_stop_handlers(on_signal: Callable[[], None]) -> Callable[[], None]:
    """Call on_signal in the running loop for each stop signal; returns the undo function."""
    loop = asyncio.get_running_loop()
    on_signal = _ignore_echoes(on_signal)
    if sys.platform == "win32":
        # No loop.add_signal_handler on Windows; a plain handler hands over to the loop.
        def handler(signum: int, frame: FrameType | None) -> None:
            loop.call_soon_threadsafe(on_signal)

        wanted = (signal.SIGINT, signal.SIGBREAK, signal.SIGTERM)
        previous = {sig: signal.signal(sig, handler) for sig in wanted}
        return lambda: _restore(previous)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    return lambda: _remove(loop)


def _ignore_echoes(on_signal: Callable[[], None]) -> Callable[[], None]:
    last = [float("-inf")]

    def handle() -> None:
        now = time.monotonic()
        if now - last[0] >= REPEAT_WINDOW_S:
            last[0] = now
            on_signal()
    return handle


def _remove(loop: asyncio.AbstractEventLoop) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)


def _restore(previous: Mapping[signal.Signals, Any]) -> None:
    for sig, handler in previous.items():
        # None: the old handler was not installed from Python; the default is the best guess.
        signal.signal(sig, signal.SIG_DFL if handler is None else handler)
