"""What a run has spent (wall time, generations), kept across the sessions of a resumed run."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from ..logs import generation_counts
from ..rundir import write_json_atomically


class Spending:
    """The wall time and generations a run has spent, kept in ``spent.json`` (every
    ``every`` seconds from a background thread, and on the way out) so that a resumed run
    reports what all its sessions spent, even when an earlier one was killed."""

    FILE = "spent.json"

    def __init__(self, folder: Path, reasoner: Any, carried: bool, every: float = 30.0) -> None:
        self.file, self.reasoner, self.every = folder / self.FILE, reasoner, every
        earlier = json.loads(self.file.read_text()) if carried and self.file.exists() else {}
        self.earlier_seconds = float(earlier.get("seconds", 0.0))
        self.earlier_generations = int(earlier.get("generations", 0))
        self.started, self.generated = time.perf_counter(), self._generations()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._keep, name="dspy-greater-spent", daemon=True)

    def totals(self) -> tuple[float, int]:
        return (
            self.earlier_seconds + time.perf_counter() - self.started,
            self.earlier_generations + self._generations() - self.generated,
        )

    def _generations(self) -> int:
        return generation_counts(self.reasoner)[0]

    def save(self) -> None:
        seconds, generations = self.totals()
        write_json_atomically(self.file, {"seconds": seconds, "generations": generations})

    def _keep(self) -> None:
        while not self._stop.wait(self.every):
            self.save()

    def __enter__(self) -> Spending:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.save()
