"""What the resumable training loops share (DON, representations, policy): stopping after the current step on a
first Ctrl-C, and reading back a log whose last line an interrupt may have cut short."""

from __future__ import annotations

import contextlib
import json
import signal
import threading
from pathlib import Path


@contextlib.contextmanager
def stop_after_step():
    """Yields a list that a first Ctrl-C appends to (so the loop can finish its step and save); the second Ctrl-C
    raises KeyboardInterrupt as usual. Outside the main thread, signals stay as they are."""
    stop: list[bool] = []
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def first(signum, frame):
        stop.append(True)
        signal.signal(signal.SIGINT, previous)

    previous = signal.signal(signal.SIGINT, first)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


def log_lines_before(path: Path, step: int) -> list[str]:
    """The complete JSON lines of a training log (one object with a `step` per line) of steps before `step`; a
    line cut short by an interrupted run is left out."""
    if not path.exists():
        return []
    lines = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record["step"] < step:
            lines.append(line)
    return lines
