"""Follow a local Ray Train run from its driver: one callback per finished epoch, while ``fit_distributed`` runs.

The workers' own output stays in Ray's logs. What a driver can see are the checkpoint snapshots Ray Train writes
under ``<storage>/<name>-stage<k>/`` (``moments.train.storage``); :class:`EpochWatcher` reads the latest result of
each stage from them. The snapshot is Ray Train's own file, not an API, so reading it is best effort: a snapshot
being written, or in another layout, is skipped.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train's record of a run's checkpoints


class EpochWatcher:
    """Calls ``on_epoch(metrics)`` once for each epoch that a stage of run ``name`` under the local folder
    ``storage`` reports (``metrics`` holds ``stage``, ``epoch``, ``loss_total``, ``val_...``, ``pairs_per_s``).

    A context manager: it polls every ``every_s`` seconds in a thread, and once more on exit."""

    def __init__(self, storage: Path, name: str, on_epoch: Callable[[dict[str, Any]], None],
                 every_s: float = 2.0) -> None:
        self.storage, self.name, self.on_epoch, self.every_s = Path(storage), name, on_epoch, every_s
        self.seen: set[tuple[int, int]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="epoch-watcher", daemon=True)

    def __enter__(self) -> EpochWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.poll()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.poll()

    def poll(self) -> None:
        """Report the epochs finished since the last poll, stage by stage."""
        for snapshot in sorted(self.storage.glob(f"{self.name}-stage*/{SNAPSHOT}")):
            try:
                metrics = json.loads(snapshot.read_text())["latest_checkpoint_result"]["metrics"]
                key = (int(metrics["stage"]), int(metrics["epoch"]))
            except (OSError, ValueError, KeyError, TypeError):
                continue  # being written, or another layout: progress is best effort
            if key not in self.seen:
                self.seen.add(key)
                self.on_epoch(metrics)
