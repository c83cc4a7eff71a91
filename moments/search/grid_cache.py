"""The grids of recently grounded candidate videos, kept in memory by a searcher that stays loaded.

Live search grounds a few candidate videos per search; a service answers many searches whose candidates overlap.
``GridCache`` keeps the most recently used videos' ``VideoGrids`` (what DRN needs of a video: its windows'
grids) up to a byte budget, so such a searcher reads a video's inputs once while it keeps coming back. A paper-size
video (T 32, D 4096, float16) takes 256 KB: the service's default of 256 MB holds about 1,000 of them.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable

from moments.index.live_inputs import VideoGrids


class GridCache:
    """Least-recently-used ``VideoGrids`` by video id, at most ``max_bytes`` of grids (0: keeps nothing)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max(0, int(max_bytes))
        self._grids: OrderedDict[str, VideoGrids] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()  # the service searches on several threads
        self.hits = 0
        self.misses = 0

    def take(self, video_ids: Iterable[str]) -> dict[str, VideoGrids]:
        """The cached grids among ``video_ids`` (each marked as just used)."""
        found = {}
        with self._lock:
            for video_id in video_ids:
                grids = self._grids.get(video_id)
                if grids is None:
                    self.misses += 1
                    continue
                self._grids.move_to_end(video_id)
                found[video_id] = grids
                self.hits += 1
        return found

    def keep(self, videos: Iterable[VideoGrids]) -> None:
        """Remember ``videos``, forgetting the least recently used beyond the budget."""
        if self.max_bytes == 0:
            return
        with self._lock:
            for video in videos:
                size = int(video.grids.nbytes)
                if size > self.max_bytes:
                    continue
                old = self._grids.pop(video.video_id, None)
                if old is not None:
                    self._bytes -= int(old.grids.nbytes)
                self._grids[video.video_id] = video
                self._bytes += size
            while self._bytes > self.max_bytes:
                _, dropped = self._grids.popitem(last=False)
                self._bytes -= int(dropped.grids.nbytes)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._grids)
