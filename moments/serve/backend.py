"""What the search service answers, without the web framework: readiness, search, a video's moments, media.

`SearchBackend(settings)` opens the index, the sentence model and the video manifest once. Until they are all
there (a db with no `segments` table yet, say) it is not ready and says why; it tries again at most every
`RETRY_S` seconds, so a service started before the grounding job becomes ready once the table exists. Live
search (`live=1`) is two-stage search (`moments.search.two_stage.TwoStageSearcher`) over the db's `cells` table:
the searcher is made on the first live search and kept. Every bad parameter is a `BadRequest`
(moments.serve.params) that the service answers with a 4xx JSON message.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from drn.errors import InputError
from drn.store.object_store import is_uri
from drn.text.sentence import embed_text
from moments.index import CELLS_TABLE, SEGMENTS_TABLE, Index, SearchAnswer, connect
from moments.serve import params
from moments.serve.media import Clip, frame_jpeg, moment_clip
from moments.serve.params import BadRequest
from moments.serve.videos import LibraryVideo, VideoLibrary

if TYPE_CHECKING:
    from moments.search.two_stage import TwoStageSearcher

logger = logging.getLogger(__name__)

RETRY_S = 2.0
LIVE_HINT = "search it with live=1 (where the index has a retrieval stage) or add it to the collection"
FRAME_CACHE = 2048


@dataclass(frozen=True)
class ServiceSettings:
    """What the service serves: the LanceDB index, and optionally the feature store (whose `videos/` table says
    which videos may be played), the folder holding the videos, and the checkpoint for live search."""

    db: str
    table: str = SEGMENTS_TABLE
    features: str | None = None
    videos: str | None = None
    checkpoint: str | None = None
    refresh_s: float = 30.0  # how often the service moves to the index's newest version (writes by jobs)
    grid_cache_mb: float = 256.0  # live search: the recent candidates' grids kept in memory (moments.search.grid_cache)


def replica_torch_threads() -> int:
    """Torch threads for live search's DRN in this process: the CPUs Ray reserved for it, at least 1 (``jobs.serve
    --num-cpus``). Requests run side by side in threads and share them. On 2 cores, a replica given both answers a
    live search in 226 ms instead of 356 ms with one, at the same throughput under 8 and 32 clients
    (benchmarks/RESULTS.md, issue 20)."""
    import ray

    if not ray.is_initialized():
        return 1
    try:
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 0)
    except AssertionError:  # Ray's answer in a driver, which has no resources reserved
        return 1
    return max(1, int(cpus))


class NotReady(Exception):
    """The service cannot answer yet; the message says why."""


class SearchBackend:
    """The index, the sentence model and the video manifest, loaded once; answers as JSON-ready dicts."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self.index: Index | None = None
        self.library: VideoLibrary | None = None
        self.reason: str | None = "starting"
        self._lock = threading.Lock()
        self._searcher: TwoStageSearcher | None = None  # live search's, made on the first live search
        self._searcher_lock = threading.Lock()
        self._last_try = -math.inf
        self._last_refresh = time.monotonic()
        self.try_ready()

    # ------------------------------------------------------------------ readiness
    @property
    def ready(self) -> bool:
        return self.index is not None

    def try_ready(self) -> bool:
        """Load what is missing; True once everything is loaded. Failures set `reason` and never raise."""
        if self.ready:
            return True
        with self._lock:
            if self.ready or time.monotonic() - self._last_try < RETRY_S:
                return self.ready
            self._last_try = time.monotonic()
            try:
                self._load()
            except (InputError, OSError, ValueError) as error:
                self.reason = str(error)
            except Exception as error:  # noqa: BLE001 - the service must stay up and say what went wrong
                logger.exception("loading the search service failed")
                self.reason = f"{type(error).__name__}: {error}"
            return self.ready

    def _load(self) -> None:
        settings = self.settings
        if settings.checkpoint and not is_uri(settings.checkpoint) and not Path(settings.checkpoint).is_file():
            raise InputError("no such checkpoint file", path=settings.checkpoint)
        index = Index(settings.db, table=settings.table)
        index.table  # noqa: B018 - raises InputError naming the db when the table does not exist yet
        library = VideoLibrary.from_store(settings.features, settings.videos) if settings.features else None
        import torch

        torch.set_num_threads(replica_torch_threads())
        embed_text("warm up")  # loads MiniLM once
        if index.count() > 0:
            index.search("warm up", k=1)  # opens the index files once
        self.library, self.index, self.reason = library, index, None
        self._last_refresh = time.monotonic()

    def require_ready(self) -> Index:
        if not self.try_ready():
            raise NotReady(f"the service is not ready: {self.reason}")
        assert self.index is not None
        if time.monotonic() - self._last_refresh > self.settings.refresh_s:
            self._last_refresh = time.monotonic()
            self.index.refresh()
        return self.index

    def health(self) -> dict[str, Any]:
        """Readiness and what is loaded; `pid` and `rss_mb` are the serving process's."""
        ready = self.try_ready()
        body: dict[str, Any] = {
            "ready": ready, "reason": None if ready else self.reason, "db": self.settings.db,
            "table": self.settings.table, "features": self.settings.features, "checkpoint": self.settings.checkpoint,
            "pid": os.getpid(), "rss_mb": resident_mb(),
        }
        if ready:
            assert self.index is not None
            body.update(rows=self.index.count(), index_version=self.index.version, live=self.live_available(),
                        videos=len(self.library) if self.library is not None else None,
                        video_root=str(self.library.root) if self.library is not None and self.library.root else None)
        return body

    # ------------------------------------------------------------------ search
    def search(self, query: dict[str, str]) -> dict[str, Any]:
        """GET /api/search: q, k, video, min_score, run, live."""
        text = params.query_text(query.get("q"))
        k = params.k_value(query.get("k"))
        video = params.name(query.get("video"), "video")
        minimum = params.min_score(query.get("min_score"))
        run = params.name(query.get("run"), "run")
        live = params.flag(query.get("live"), "live")
        index = self.require_ready()
        if video is not None and not self.knows_video(video):
            raise BadRequest(f"unknown video {params.quoted(video)}: it is neither in the index nor in the "
                             "feature store", status=404, parameter="video")
        try:
            if live:
                results = self._live_search(text, k, video, minimum, run)
                notices = [*self.two_stage_searcher().notices, *live_notices(text, results)]
            else:
                answer = index.answer(text, k=k, video_id=video, min_score=minimum, run_id=run)
                results, notices = answer.rows, answer.notices(LIVE_HINT)
        except InputError as error:
            raise BadRequest(str(error)) from None
        return {"query": text, "k": k, "live": live, "count": results.num_rows, "results": json_rows(results),
                "notices": notices, "metadata": schema_notes(results.schema)}

    def live_available(self) -> bool:
        """Whether live search can run: the service is ready and the db has a `cells` table."""
        if self.index is None:
            return False
        if self._searcher is not None:
            return True
        try:
            connect(self.settings.db).open_table(CELLS_TABLE)
        except (InputError, OSError, ValueError):  # no such table (ValueError), or the db cannot be reached
            return False
        return True

    def two_stage_searcher(self) -> TwoStageSearcher:
        """Live search's searcher over the db's `cells` table, made once: the checkpoint is the service's
        `checkpoint` (which must be the one the table was built with) or else the one the table records."""
        with self._searcher_lock:
            if self._searcher is None:
                from moments.search.two_stage import TwoStageSearcher  # torch and DRN load on the first live search

                self._searcher = TwoStageSearcher(self.settings.db, self.settings.checkpoint,
                                                  grid_cache_mb=self.settings.grid_cache_mb)
            return self._searcher

    def _live_search(self, text: str, k: int, video: str | None, minimum: float | None,
                     run: str | None) -> pa.Table:
        if not self.live_available():
            raise BadRequest(f"no retrieval stage in this index: live search needs the '{CELLS_TABLE}' table that "
                             "python -m jobs.index_library writes; search without live=1 to use the grounded "
                             "queries", status=409, parameter="live")
        # with a video, that video is grounded (one DRN pass) whether or not retrieval would have picked it
        results = self.two_stage_searcher().search(text, k=k, min_score=minimum, video_id=video)
        if run is not None:
            results = results.filter(pc.equal(results["run_id"], run))
        return results

    def knows_video(self, video_id: str) -> bool:
        if self.library is not None and video_id in self.library:
            return True
        return self.index is not None and self.index.count(video_id=video_id) > 0

    # ------------------------------------------------------------------ videos
    def videos(self) -> dict[str, Any]:
        """GET /api/videos: the videos that can be played (the manifest), with durations."""
        self.require_ready()
        if self.library is None:
            return {"count": 0, "videos": [], "note": "started without --features: no videos to play"}
        rows = []
        for video_id in self.library.ids():
            video = self.library.get(video_id)
            assert video is not None
            rows.append({**video.summary(), "available": self.library.file_of(video_id) is not None})
        return {"count": len(rows), "videos": rows}

    def video(self, video_id: str, query: dict[str, str]) -> dict[str, Any]:
        """GET /api/videos/{id}: the video's duration and the moments found in it, best score first."""
        video_id = params.name(video_id, "video") or ""
        run = params.name(query.get("run"), "run")
        limit = params.whole_number(query.get("limit"), "limit", params.DEFAULT_MOMENTS, 1, params.MAX_K)
        index = self.require_ready()
        info = self.library.get(video_id) if self.library is not None else None
        if info is None and not self.knows_video(video_id):
            raise BadRequest(f"unknown video {params.quoted(video_id)}", status=404, parameter="video")
        frame = index.to_pandas(run_id=run, video_id=video_id)
        total = len(frame)
        frame = frame.sort_values(["score", "run_id", "query_id", "rank"], ascending=[False, True, True, True],
                                  kind="stable").head(limit)
        moments = json_rows(pa.Table.from_pandas(frame, preserve_index=False))
        known = info.duration_s if info is not None else None
        duration = known or max((m["end_s"] or 0.0 for m in moments), default=0.0)
        body = {"video_id": video_id, "duration_s": duration, "moments_total": total, "count": len(moments),
                "moments": moments, "available": self.library is not None and self.library.file_of(video_id)
                is not None}
        if info is not None:
            body.update(fps=info.fps, width=info.width, height=info.height)
        return body

    def video_file(self, video_id: str | None) -> tuple[LibraryVideo, Path]:
        """The manifest row and the file of a servable video; a BadRequest (404) for anything else."""
        video_id = params.name(video_id, "video")
        if video_id is None:
            raise BadRequest("video is missing: give a video id, e.g. ?video=synth_0001", parameter="video")
        self.require_ready()
        if self.library is None:
            raise BadRequest("this service was started without --features, so it serves no video files",
                             status=404, parameter="video")
        video = self.library.get(video_id)
        if video is None:
            raise BadRequest(f"unknown video {params.quoted(video_id)}: not in the feature store's videos",
                             status=404, parameter="video")
        path = self.library.file_of(video_id)
        if path is None:
            raise BadRequest(f"the file of video {params.quoted(video_id)} is not under the video root",
                             status=404, parameter="video")
        return video, path

    def clip(self, query: dict[str, str]) -> tuple[Path, Clip | None]:
        """GET /api/clip: the whole file (the service answers Range requests), or a short clip of [start, end]."""
        video, path = self.video_file(query.get("video"))
        span = params.clip_span(query.get("start"), query.get("end"), video.duration_s or math.inf)
        if span is None:
            return path, None
        return path, moment_clip(path, *span)

    def frame(self, query: dict[str, str]) -> bytes:
        """GET /api/frames: the frame at t as JPEG (width pixels wide)."""
        video, path = self.video_file(query.get("video"))
        t = params.frame_time(query.get("t"), video.duration_s or math.inf)
        width = params.frame_width(query.get("width"))
        stat = path.stat()
        return _cached_frame(str(path), stat.st_mtime_ns, round(t, 3), width)


@functools.lru_cache(maxsize=FRAME_CACHE)
def _cached_frame(path: str, mtime_ns: int, t: float, width: int) -> bytes:
    return frame_jpeg(path, t, width)


def live_notices(text: str, rows: pa.Table) -> list[str]:
    """What a user must see beside live-search rows: live search grounds the text itself (so it is its own nearest
    query), which leaves the notices about runs whose scores do not compare across videos."""
    answer = SearchAnswer.of_live_search(text, rows)
    return answer.notices(LIVE_HINT)


def json_rows(table: pa.Table) -> list[dict[str, Any]]:
    """Every column of every row as JSON-ready values (the fields `jobs.search --json` prints); a value that
    is not finite (NaN, inf) becomes null, since JSON has no such numbers."""
    return [{key: _json_value(value) for key, value in row.items()} for row in table.to_pylist()]


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_json_value(item) for item in value]
    if isinstance(value, dict):
        return {key: _json_value(item) for key, item in value.items()}
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def schema_notes(schema: pa.Schema) -> dict[str, str]:
    """The result table's schema metadata (notices the index attaches to a search), as text."""
    return {key.decode(errors="replace"): value.decode(errors="replace")
            for key, value in (schema.metadata or {}).items() if not key.startswith(b"pandas")}


def resident_mb() -> float | None:
    """This process's resident memory in MB (Linux /proc), or None where it cannot be read."""
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
        return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
    except (OSError, ValueError, IndexError):
        return None
