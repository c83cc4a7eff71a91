"""Library-wide grounding on Ray Data into the LanceDB `segments` table (``run_grounding``, behind
``python -m jobs.ground``; DESIGN.md sections 7 and 8).

1. The driver checks everything before any work: the queries (blank and repeated ones dropped and reported),
   the checkpoint and its feature dimension against the store's, the LanceDB location and table schema. It
   encodes the queries once (the model's query side and the 384-d MiniLM embedding) and derives the run id.
2. It chooses the pairs to score. Candidate-driven (``mode`` "candidates", or "auto" when the database holds a
   `cells` table built from the same checkpoint): the retrieval stage encodes every query once and each query
   takes its ``candidates`` best videos from the cells table, so the work grows as queries x N. Exhaustive: every
   query against every video.
3. Videos the run already finished are skipped (``moments.index.run_videos``: a killed job resumes there, and a
   rerun over a grown library grounds only the new videos).
4. The rest flow through a Ray Data actor pool (``moments.library.ray_data``), video-major; each actor holds the
   model and the encoded queries (put once in the object store) and scores each video against the queries that
   picked it, or all of them (``moments.library.scoring.LibraryScorer``: pooling and the video projection once per
   video, pairs in batches).
5. The driver drops the rows that cannot enter their query's best ``keep_per_query`` (``BestPerQuery``), merges
   the rest into LanceDB in batches of ``write_batch_rows`` (``Index.write_segments``: merge on (run, query,
   video, rank), so rewriting is harmless) and records the videos finished, then computes each segment's
   library-wide rank per query, deletes the rows ranked ``keep_per_query`` or worse and brings the indices up to
   date.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from drn.errors import InputError
from drn.inference import EncodedQueries
from drn.retrieval import RetrievalHead, require_trained_retrieval
from drn.store import FeatureStore, absolute_uri
from moments.index.cells import CELLS_TABLE, CellsTable, best_videos
from moments.index.db import check_db_writable, default_db_uri, sql_literal
from moments.index.queries import query_rows
from moments.index.run_videos import RunVideos
from moments.index.runs import RunRecord, record_run
from moments.index.segments import SEGMENTS_TABLE
from moments.index.table import Index
from moments.library.batches import LibraryProgress, write_in_batches
from moments.library.bounded import BestPerQuery
from moments.library.model import (
    LoadedModel,
    check_queries_encodable,
    encode_query_side,
    grounder_from_payload,
    load_model,
    model_payload,
)
from moments.library.queries import Query, QueryCollection, read_queries
from moments.library.ray_data import Resources, WindowOptions, load_videos, select_videos, videos_through_actors
from moments.library.scoring import LibraryScorer, QuerySide, RunLabels
from moments.library.windows import WindowRule, window_rule
from pipeline.capacity import PipelineNeeds, watch
from pipeline.ray_runtime import start_ray

MODES = ("auto", "candidates", "exhaustive")


@dataclass
class GroundingSummary(LibraryProgress):
    run_id: str
    checkpoint_id: str
    window: str
    queries: int
    dropped_queries: list[tuple[int, str]] = field(default_factory=list)
    mode: str = "exhaustive"  # what the run did: "candidates" or "exhaustive"
    mode_reason: str = ""  # why (the choice of mode "auto")
    candidates: int = 0  # N: videos per query in candidate mode (0: every video)
    keep_per_query: int = 0  # M: moments kept per query across the library (0: unbounded)
    pairs_scored: int = 0  # (query, video) pairs scored by this job
    videos_unpicked: int = 0  # candidate mode: selected videos that no query picked
    rows_dropped: int = 0  # rows that could not enter their query's best M (dropped before or after writing)
    rows_in_run: int = 0  # the run's rows in the table at the end

    @property
    def pairs(self) -> int:
        return self.pairs_scored

    def mode_line(self) -> str:
        if self.mode == "candidates":
            what = f"candidate-driven, N = {self.candidates} videos per query"
        else:
            what = "exhaustive, every query x every video"
        kept = f"M = {self.keep_per_query} moments kept per query" if self.keep_per_query else "every moment kept"
        return f"mode: {what}{f' ({self.mode_reason})' if self.mode_reason else ''}; {kept}"

    def throughput_line(self) -> str:
        rate = self.pairs / self.seconds if self.seconds > 0 else 0.0
        shape = (f"{self.videos_done} videos, {self.queries} queries x up to {self.candidates} videos each"
                 if self.mode == "candidates" else f"{self.videos_done} videos x {self.queries} queries")
        return (f"grounded {self.pairs} (query, video) pairs in {self.seconds:.1f} s: {rate:.1f} pairs/s "
                f"({shape})")


def run_record(model: LoadedModel, run_id: str, kind: str, checkpoint: str, features: str, *,
               mode: str = "exhaustive", candidates: int = 0, keep_per_query: int = 0) -> RunRecord:
    """The `runs` row of a grounding run with this model: its mode, N (0: every video) and M (0: unbounded)."""
    return RunRecord(run_id, kind, model.checkpoint_id, absolute_uri(checkpoint), absolute_uri(features),
                     model.negatives_per_positive, mode=mode, candidates=candidates, keep_per_query=keep_per_query)


def default_run_id(model: LoadedModel, features: str, queries: Sequence[Query], top_k: int, rule: WindowRule,
                   mode: str = "exhaustive", candidates: int = 0, keep_per_query: int = 0) -> str:
    """``run-<12 hex>`` from what decides the rows: checkpoint content, store, queries, top-k, windows, and the
    mode with its N and the M kept per query (left out for an exhaustive, unbounded run: its id is as before).

    The store's video list is left out on purpose: rerunning after the library grew continues the same run and
    grounds only the new videos.
    """
    basis: dict[str, Any] = {
        "checkpoint": model.sha256,
        "features": absolute_uri(features),
        "queries": [[q.query_id, q.text] for q in queries],
        "top_k": top_k,
        "window": [rule.window_s, rule.stride_s, rule.max_whole_s],
        "decode": [model.config.decode.top_per_level, model.config.decode.nms_threshold],
    }
    if mode == "candidates":
        basis["candidates"] = candidates
    if keep_per_query:
        basis["keep_per_query"] = keep_per_query
    return "run-" + hashlib.sha256(json.dumps(basis, sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class GroundingPlan:
    """Which pairs a run scores: ``mode`` "candidates" (with the cells table) or "exhaustive", and why."""

    mode: str
    reason: str
    cells: CellsTable | None = None
    head: RetrievalHead | None = None  # the checkpoint's retrieval stage (candidate mode)


def choose_mode(mode: str, model: LoadedModel, db: str, cells_table: str, video_ids: Sequence[str]) -> GroundingPlan:
    """The mode a run uses: "auto" is candidate-driven when ``db`` holds a cells table built from this checkpoint,
    else exhaustive (the reason says why). InputError for mode "candidates" without such a table, and for a cells
    table of this checkpoint that lacks some of the videos to ground."""
    if mode == "exhaustive":
        return GroundingPlan("exhaustive", "")
    cells = CellsTable(db, cells_table)
    index_first = (f"index the library's cells first (python -m jobs.index_library --checkpoint CHECKPOINT "
                   f"--features STORE --db {db}), or ground every pair (mode exhaustive)")
    if not cells.exists:
        if mode == "candidates":
            raise InputError(f"candidate-driven grounding needs the '{cells_table}' table of the retrieval stage, and "
                             f"there is none: {index_first}", path=db)
        return GroundingPlan("exhaustive", f"no '{cells_table}' table in {db}")
    info = cells.info
    if info.sha256 != model.sha256:
        if mode == "candidates":
            raise InputError(f"the '{cells_table}' table was built with checkpoint {info.checkpoint_id}, not with this "
                             f"one ({model.checkpoint_id}): index the cells again with this checkpoint "
                             "(python -m jobs.index_library --overwrite), or ground every pair (mode exhaustive)",
                             path=db)
        return GroundingPlan("exhaustive", f"the '{cells_table}' table is of checkpoint {info.checkpoint_id}, not "
                                           f"{model.checkpoint_id}")
    head = require_trained_retrieval(model.grounder.model, info.checkpoint)
    if head.dim != info.dim:
        raise InputError(f"the checkpoint's retrieval vectors are {head.dim}-d, the '{cells_table}' table's "
                         f"{info.dim}-d", path=db)
    missing = sorted(set(video_ids) - cells.video_ids())
    if missing:
        raise InputError(f"the '{cells_table}' table has no cells for {len(missing)} of the {len(video_ids)} videos "
                         f"to ground (e.g. {missing[0]!r}): {index_first.replace('first', 'again')}", path=db)
    return GroundingPlan("candidates", f"'{cells_table}' table of this checkpoint" if mode == "auto" else "",
                         cells, head)


def pick_candidates(plan: GroundingPlan, side: QuerySide, video_ids: Sequence[str], count: int
                    ) -> dict[str, list[int]]:
    """``video_id -> indices of the queries that picked it``: each query's ``count`` best videos of ``video_ids``
    by their best cell (``CellsTable.nearest_many``, ``best_videos``), from ``max(300, 15 * count)`` cells."""
    with torch.no_grad():
        vectors = plan.head.encode_query(side.encoded.features).cpu().numpy()
    hits = plan.cells.nearest_many(vectors, max(300, 15 * count))
    hits = hits.filter(pc.is_in(hits.column("video_id"), value_set=pa.array(list(video_ids), pa.string())))
    hits = hits.take(pc.sort_indices(hits, [("query_index", "ascending")]))
    bounds = np.searchsorted(hits.column("query_index").to_numpy(), np.arange(len(vectors) + 1))
    queries_of: dict[str, list[int]] = {}
    for q in range(len(vectors)):
        for video_id in best_videos(hits.slice(bounds[q], bounds[q + 1] - bounds[q]), count):
            queries_of.setdefault(video_id, []).append(q)
    return queries_of


def completed_videos(index: Index, done_log: RunVideos, run_id: str, query_ids: Sequence[str]) -> set[str]:
    """The videos ``run_id`` finished: those recorded in `run_videos`, or for a run written before it, those with
    rank-0 rows of every query (then recorded). A run without rows has finished nothing."""
    if index.count(run_id=run_id) == 0:
        done_log.delete_run(run_id)
        return set()
    done = done_log.done(run_id)
    if not done:
        done = index.completed_videos(run_id, query_ids)
        done_log.add(run_id, done)
    return done


def finished_scores(index: Index, run_id: str, done: set[str]) -> pa.Table:
    """``query_id`` and ``score`` of the rows of ``run_id`` that belong to the videos it finished (``done``): what
    a resumed or grown run's best M start from. The rows of a video written but not recorded as finished (a job
    killed between the two commits) are left out: that video is grounded again and offers them then, and offered
    twice they would count twice against their query's best M and push out rows that belong there."""
    if not done or index.count(run_id=run_id) == 0:
        return pa.table({"query_id": pa.array([], pa.string()), "score": pa.array([], pa.float32())})
    rows = (index.table.search().where(f"run_id = {sql_literal(run_id)}").select(["video_id", "query_id", "score"])
            .limit(None).to_arrow())
    finished = pc.is_in(rows.column("video_id"), value_set=pa.array(sorted(done), pa.string()))
    return rows.filter(finished).select(["query_id", "score"])


class GroundingActor:
    """One Ray Data actor: the model and the encoded queries, loaded once; batches of video ids in, rows out."""

    def __init__(self, model: Any, queries: Any, features: str, rule: WindowRule, labels: RunLabels, top_k: int,
                 pair_batch_size: int, device: str, threads: int) -> None:
        import ray

        model = ray.get(model) if isinstance(model, ray.ObjectRef) else model
        queries = ray.get(queries) if isinstance(queries, ray.ObjectRef) else queries
        if device == "cpu":
            torch.set_num_threads(max(1, threads))
        grounder = grounder_from_payload(model, device)
        encoded = EncodedQueries(queries["texts"], queries["encoded"].to(device))
        side = QuerySide(queries["ids"], queries["texts"], queries["embeddings"], encoded)
        self.scorer = LibraryScorer(grounder, side, rule, labels, top_k=top_k, pair_batch_size=pair_batch_size)
        self.store = FeatureStore(features)

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        video_ids = [str(v) for v in batch["video_id"]]
        queries_of = None
        if "query_indices" in batch:  # candidate mode: each video with the queries that picked it
            queries_of = {vid: [int(q) for q in picked] for vid, picked in zip(video_ids, batch["query_indices"],
                                                                               strict=True)}
        videos, failures = load_videos(self.store, video_ids)
        return self.scorer.score(videos, failures, queries_of)


def scored_batches_ray(
    model: LoadedModel, side: QuerySide, features: str, video_ids: list[str], rule: WindowRule, labels: RunLabels,
    top_k: int, resources: Resources, queries_of: dict[str, list[int]] | None = None,
) -> Iterator[pa.Table]:
    """Actor outputs (rows plus failure rows) of a Ray Data job over ``video_ids``, as they finish; with
    ``queries_of`` each video is scored against the queries that picked it only."""
    import ray

    start_ray()
    queries = {"ids": side.ids, "texts": side.texts, "embeddings": side.embeddings,
               "encoded": side.encoded.features.detach().cpu()}
    items: list[Any] = list(video_ids) if queries_of is None else [
        {"video_id": vid, "query_indices": list(queries_of[vid])} for vid in video_ids]
    dataset = videos_through_actors(GroundingActor, items, resources, (
        ray.put(model_payload(model.grounder)), ray.put(queries), features, rule, labels, top_k,
        resources.pair_batch_size, resources.device, max(1, int(resources.cpus_per_actor))))
    needs = PipelineNeeds("grounding", "grounding actor", resources.num_actors, resources.cpus_per_actor,
                          resources.num_gpus_per_actor)
    yield from watch(dataset.iter_batches(batch_size=None, batch_format="pyarrow"), needs,
                     wait_s=resources.capacity_wait_s)


def scored_batches_local(
    model: LoadedModel, side: QuerySide, store: FeatureStore, video_ids: list[str], rule: WindowRule,
    labels: RunLabels, top_k: int, resources: Resources, queries_of: dict[str, list[int]] | None = None,
) -> Iterator[pa.Table]:
    """The same rows computed in this process (no Ray), ``videos_per_batch`` videos at a time."""
    scorer = LibraryScorer(model.grounder, side, rule, labels, top_k=top_k,
                           pair_batch_size=resources.pair_batch_size)
    for first in range(0, len(video_ids), resources.videos_per_batch):
        videos, failures = load_videos(store, video_ids[first:first + resources.videos_per_batch])
        yield scorer.score(videos, failures, queries_of)


@dataclass
class GroundingJob:
    """Everything ``jobs.ground`` takes; ``run()`` checks it all, grounds, writes, ranks and indexes."""

    checkpoint: str
    features: str
    queries: str | QueryCollection
    db: str | None = None
    table: str = SEGMENTS_TABLE
    run_id: str | None = None
    videos: str | Sequence[str] | None = None
    top_k: int = 5
    overwrite: bool = False
    windows: WindowOptions = field(default_factory=WindowOptions)
    resources: Resources = field(default_factory=Resources)
    write_batch_rows: int = 50_000
    max_videos: int | None = None  # ground at most this many of the videos still to do (trials, tests)
    fail_after_writes: int | None = None  # test hook: raise after this many writes, as if the job were killed
    on_write: Callable[[int, int], None] | None = None  # (videos finished so far, rows written so far)
    candidates: int = 20  # N: each query's best videos by the cells table (candidate mode)
    mode: str = "auto"  # "auto" (candidates when a cells table of this checkpoint exists), "candidates", "exhaustive"
    keep_per_query: int | None = 100  # M: moments kept per query across the library; None or 0: every one
    cells_table: str = CELLS_TABLE

    def __post_init__(self) -> None:
        # Actors run in folders of their own (or on other machines): hand them absolute paths.
        self.features, self.checkpoint = absolute_uri(self.features), absolute_uri(self.checkpoint)

    def check_options(self) -> None:
        """InputError for a setting out of range, before any work."""
        if self.top_k < 1:
            raise InputError(f"top_k must be at least 1, not {self.top_k}")
        if self.write_batch_rows < 1:
            raise InputError("write_batch_rows must be at least 1")
        if self.mode not in MODES:
            raise InputError(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if self.candidates < 1:
            raise InputError(f"candidates must be at least 1 video per query, not {self.candidates}")
        if self.keep_per_query is not None and self.keep_per_query < 0:
            raise InputError(f"keep_per_query must be at least 1 (None or 0 keeps every moment), not "
                             f"{self.keep_per_query}")

    def run(self) -> GroundingSummary:
        self.check_options()
        keep = int(self.keep_per_query or 0)
        collection = self.queries if isinstance(self.queries, QueryCollection) else read_queries(self.queries)
        model = load_model(self.checkpoint)  # the driver only encodes queries: CPU is enough
        store = FeatureStore(self.features)
        model.grounder.check_features(store.metadata.feature_dim, self.features)
        collection = check_queries_encodable(model.grounder, collection)
        rule = window_rule(model.config, model.metrics, window_s=self.windows.window_s,
                           stride_s=self.windows.stride_s, max_whole_s=self.windows.max_whole_s)
        video_ids = select_videos(store, self.videos)
        uri = self.db or default_db_uri()
        plan = choose_mode(self.mode, model, uri, self.cells_table, video_ids)
        candidates = self.candidates if plan.mode == "candidates" else 0
        run_id = self.run_id or default_run_id(model, self.features, collection.queries, self.top_k, rule,
                                               plan.mode, candidates, keep)
        check_db_writable(uri)
        index = Index(uri, table=self.table, overwrite=self.overwrite)
        done_log = RunVideos(uri, self.table)
        summary = GroundingSummary(run_id, model.checkpoint_id, rule.describe(), len(collection),
                                   videos_total=len(video_ids), dropped_queries=list(collection.dropped),
                                   mode=plan.mode, mode_reason=plan.reason, candidates=candidates,
                                   keep_per_query=keep)
        if self.overwrite:
            index.delete_run(run_id)
            done_log.delete_run(run_id)
        started = time.perf_counter()
        side, queries_of, pending = None, None, video_ids
        if plan.mode == "candidates":
            side = encode_query_side(model.grounder, collection.queries)
            queries_of = pick_candidates(plan, side, video_ids, self.candidates)
            pending = [vid for vid in video_ids if vid in queries_of]
            summary.videos_unpicked = len(video_ids) - len(pending)
        done = completed_videos(index, done_log, run_id, collection.ids)
        todo = summary.to_do(pending, done, self.max_videos)
        if todo:
            if side is None:
                side = encode_query_side(model.grounder, collection.queries)
            labels = RunLabels(run_id, model.checkpoint_id)
            index.write_queries(query_rows(run_id, model.checkpoint_id, side.ids, side.texts, side.embeddings))
            batches = scored_batches_ray(model, side, self.features, todo, rule, labels, self.top_k, self.resources,
                                         queries_of)
            keeper = None
            if keep:
                keeper = BestPerQuery(collection.ids, keep)
                existing = finished_scores(index, run_id, done)  # a resumed or grown run: the best so far
                keeper.offer(existing.column("query_id"), existing.column("score").to_numpy())
            self._write_all(index, batches, summary, keeper, done_log, queries_of)
        summary.seconds = time.perf_counter() - started
        if index.count(run_id=run_id):
            index.update_library_ranks(run_id, collection.ids)
            if keep:
                summary.rows_dropped += index.keep_best(run_id, keep)
            index.ensure_indices()
            record_run(uri, run_record(model, run_id, "batch", self.checkpoint, self.features, mode=plan.mode,
                                       candidates=candidates, keep_per_query=keep))
        summary.rows_in_run = index.count(run_id=run_id)
        return summary

    def _write_all(self, index: Index, batches: Iterable[pa.Table], summary: GroundingSummary,
                   keeper: BestPerQuery | None = None, done_log: RunVideos | None = None,
                   queries_of: dict[str, list[int]] | None = None) -> None:
        """Write the rows (those that may enter their query's best M), and record the videos each write finished
        and the pairs they scored."""

        def keep(rows: pa.Table) -> pa.Table:
            kept = keeper.filter(rows)
            summary.rows_dropped += rows.num_rows - kept.num_rows
            return kept

        def finished(video_ids: list[str]) -> None:
            if done_log is not None:
                done_log.add(summary.run_id, video_ids)
            summary.pairs_scored += (len(video_ids) * summary.queries if queries_of is None else
                                     sum(len(queries_of[vid]) for vid in video_ids))

        write_in_batches(batches, index.write_segments, summary, self.write_batch_rows, self.on_write,
                         self.fail_after_writes, keep=keep if keeper is not None else None, on_videos=finished)


def run_grounding(checkpoint: str, features: str, queries: str | QueryCollection, db: str | None = None,
                  **options: Any) -> GroundingSummary:
    """Ground a query collection against a library into LanceDB; ``options`` are the fields of GroundingJob."""
    return GroundingJob(checkpoint, features, queries, db, **options).run()
