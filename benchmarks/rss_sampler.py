"""Peak resident memory of a benchmark's driver and of its local Ray workers, sampled in a thread."""

from __future__ import annotations

import threading
import time


class RssSampler(threading.Thread):
    """Peak RSS of this process and peak summed RSS of its Ray worker processes (``ray::*`` descendants: this
    driver's own local Ray, raylet -> workers), every ``every_s`` seconds until ``stop`` is set."""

    def __init__(self, every_s: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.every_s = every_s
        self.driver_peak = self.workers_peak = 0
        self.stop = threading.Event()

    def run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self.stop.is_set():
            self.driver_peak = max(self.driver_peak, me.memory_info().rss)
            total = 0
            for proc in me.children(recursive=True):
                try:
                    if proc.name().startswith("ray::"):
                        total += proc.memory_info().rss
                except psutil.Error:
                    continue
            self.workers_peak = max(self.workers_peak, total)
            time.sleep(self.every_s)
