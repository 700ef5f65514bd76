"""Stopping a training run so that it can be resumed: the first SIGINT / SIGTERM asks for a save at the next step."""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any


class StopOnSignal:
    """While active, the first SIGINT or SIGTERM only records the request (`requested()` turns true and the
    training loop saves and stops at its next step); a second one exits at once, keeping the last
    checkpoint. Outside the main thread it does nothing."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.signum is not None:
            sys.stderr.write(f"energy-ood: {name} again: exiting without saving; the last checkpoint stays\n")
            raise SystemExit(128 + signum)
        self.signum = signum
        sys.stderr.write(f"energy-ood: {name} received: saving a checkpoint at the next step, then stopping "
                         f"(send it again to stop at once)\n")
        sys.stderr.flush()

    def __enter__(self) -> "StopOnSignal":
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()
