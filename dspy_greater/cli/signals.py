"""SIGTERM ends a run as Ctrl-C does: the vLLM engine's processes do not outlive it."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from typing import Any

EXIT_TERMINATED = 143


class Sigterm:
    """SIGTERM (``kill``, a job scheduler) ends a run as Ctrl-C does, and surely: the handler
    kills vLLM's engine processes, then raises KeyboardInterrupt. Python's default, dying at once,
    leaves them running, orphaned; and vLLM swallows an exception raised while it starts (the
    engine it then fails to reach ends the run all the same)."""

    received = False
    GRACE_SECONDS = 30.0

    def __enter__(self) -> Sigterm:
        self._previous = None
        if threading.current_thread() is threading.main_thread():  # signals reach that one only
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = True
        for process in multiprocessing.active_children():
            process.kill()
        # the last resort, should anything still wait on the killed engine
        last_resort = threading.Timer(self.GRACE_SECONDS, os._exit, (EXIT_TERMINATED,))
        last_resort.daemon = True
        last_resort.start()
        raise KeyboardInterrupt
