"""Library-wide grounding on Ray Data into the LanceDB `segments` table (``run_grounding``, behind
``python -m jobs.ground``; DESIGN.md sections 7 and 8).

1. The driver checks everything before any work: the queries (blank and repeated ones dropped and reported),
   the checkpoint and its feature dimension against the store's, the LanceDB location and table schema. It
   encodes the queries once (the model's query side and the 384-d MiniLM embedding) and derives the run id.
2. Videos whose rows for every query already exist in the run are skipped (a killed job resumes there).
3. The rest flow through a Ray Data actor pool (``moments.library.ray_data``); each actor holds the model and the
   encoded queries (put once in the object store) and scores batches of videos against all queries
   (``moments.library.scoring.LibraryScorer``: pooling and the video projection once per video, pairs in batches).
4. The driver merges the rows into LanceDB in batches of ``write_batch_rows`` (``Index.write_segments``: merge on
   (run, query, video, rank), so rewriting is harmless), then computes each segment's library-wide rank per
   query and brings the indices up to date.
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
import torch

from drn.errors import InputError
from drn.inference import EncodedQueries
from drn.store import FeatureStore, absolute_uri
from moments.index.db import check_db_writable, default_db_uri
from moments.index.runs import RunRecord, record_run
from moments.index.segments import SEGMENTS_TABLE
from moments.index.table import Index
from moments.library.batches import LibraryProgress, write_in_batches
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


@dataclass
class GroundingSummary(LibraryProgress):
    run_id: str
    checkpoint_id: str
    window: str
    queries: int
    dropped_queries: list[tuple[int, str]] = field(default_factory=list)

    @property
    def pairs(self) -> int:
        return self.queries * self.videos_done

    def throughput_line(self) -> str:
        rate = self.pairs / self.seconds if self.seconds > 0 else 0.0
        return (f"grounded {self.pairs} (query, video) pairs in {self.seconds:.1f} s: {rate:.1f} pairs/s "
                f"({self.videos_done} videos x {self.queries} queries)")


def run_record(model: LoadedModel, run_id: str, kind: str, checkpoint: str, features: str) -> RunRecord:
    """The `runs` row of a grounding run with this model."""
    return RunRecord(run_id, kind, model.checkpoint_id, absolute_uri(checkpoint), absolute_uri(features),
                     model.negatives_per_positive)


def default_run_id(model: LoadedModel, features: str, queries: Sequence[Query], top_k: int, rule: WindowRule) -> str:
    """``run-<12 hex>`` from what decides the rows: checkpoint content, store, queries, top-k, windows.

    The store's video list is left out on purpose: rerunning after the library grew continues the same run and
    grounds only the new videos.
    """
    basis = {
        "checkpoint": model.sha256,
        "features": absolute_uri(features),
        "queries": [[q.query_id, q.text] for q in queries],
        "top_k": top_k,
        "window": [rule.window_s, rule.stride_s, rule.max_whole_s],
        "decode": [model.config.decode.top_per_level, model.config.decode.nms_threshold],
    }
    return "run-" + hashlib.sha256(json.dumps(basis, sort_keys=True).encode()).hexdigest()[:12]


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
        videos, failures = load_videos(self.store, [str(v) for v in batch["video_id"]])
        return self.scorer.score(videos, failures)


def scored_batches_ray(
    model: LoadedModel, side: QuerySide, features: str, video_ids: list[str], rule: WindowRule, labels: RunLabels,
    top_k: int, resources: Resources,
) -> Iterator[pa.Table]:
    """Actor outputs (rows plus failure rows) of a Ray Data job over ``video_ids``, as they finish."""
    import ray

    start_ray()
    queries = {"ids": side.ids, "texts": side.texts, "embeddings": side.embeddings,
               "encoded": side.encoded.features.detach().cpu()}
    dataset = videos_through_actors(GroundingActor, video_ids, resources, (
        ray.put(model_payload(model.grounder)), ray.put(queries), features, rule, labels, top_k,
        resources.pair_batch_size, resources.device, max(1, int(resources.cpus_per_actor))))
    needs = PipelineNeeds("grounding", "grounding actor", resources.num_actors, resources.cpus_per_actor,
                          resources.num_gpus_per_actor)
    yield from watch(dataset.iter_batches(batch_size=None, batch_format="pyarrow"), needs,
                     wait_s=resources.capacity_wait_s)


def scored_batches_local(
    model: LoadedModel, side: QuerySide, store: FeatureStore, video_ids: list[str], rule: WindowRule,
    labels: RunLabels, top_k: int, resources: Resources,
) -> Iterator[pa.Table]:
    """The same rows computed in this process (no Ray), ``videos_per_batch`` videos at a time."""
    scorer = LibraryScorer(model.grounder, side, rule, labels, top_k=top_k,
                           pair_batch_size=resources.pair_batch_size)
    for first in range(0, len(video_ids), resources.videos_per_batch):
        videos, failures = load_videos(store, video_ids[first:first + resources.videos_per_batch])
        yield scorer.score(videos, failures)


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

    def __post_init__(self) -> None:
        # Actors run in folders of their own (or on other machines): hand them absolute paths.
        self.features, self.checkpoint = absolute_uri(self.features), absolute_uri(self.checkpoint)

    def run(self) -> GroundingSummary:
        if self.top_k < 1:
            raise InputError(f"top_k must be at least 1, not {self.top_k}")
        if self.write_batch_rows < 1:
            raise InputError("write_batch_rows must be at least 1")
        collection = self.queries if isinstance(self.queries, QueryCollection) else read_queries(self.queries)
        model = load_model(self.checkpoint)  # the driver only encodes queries: CPU is enough
        store = FeatureStore(self.features)
        model.grounder.check_features(store.metadata.feature_dim, self.features)
        collection = check_queries_encodable(model.grounder, collection)
        rule = window_rule(model.config, model.metrics, window_s=self.windows.window_s,
                           stride_s=self.windows.stride_s, max_whole_s=self.windows.max_whole_s)
        video_ids = select_videos(store, self.videos)
        run_id = self.run_id or default_run_id(model, self.features, collection.queries, self.top_k, rule)
        uri = self.db or default_db_uri()
        check_db_writable(uri)
        index = Index(uri, table=self.table, overwrite=self.overwrite)
        summary = GroundingSummary(run_id, model.checkpoint_id, rule.describe(), len(collection),
                                   videos_total=len(video_ids), dropped_queries=list(collection.dropped))
        if self.overwrite:
            index.delete_run(run_id)
        todo = summary.to_do(video_ids, index.completed_videos(run_id, collection.ids), self.max_videos)
        started = time.perf_counter()
        if todo:
            side = encode_query_side(model.grounder, collection.queries)
            labels = RunLabels(run_id, model.checkpoint_id)
            batches = scored_batches_ray(model, side, self.features, todo, rule, labels, self.top_k, self.resources)
            self._write_all(index, batches, summary)
        summary.seconds = time.perf_counter() - started
        if index.count(run_id=run_id):
            index.update_library_ranks(run_id, collection.ids)
            index.ensure_indices()
            record_run(uri, run_record(model, run_id, "batch", self.checkpoint, self.features))
        return summary

    def _write_all(self, index: Index, batches: Iterable[pa.Table], summary: GroundingSummary) -> None:
        write_in_batches(batches, index.write_segments, summary, self.write_batch_rows, self.on_write,
                         self.fail_after_writes)


def run_grounding(checkpoint: str, features: str, queries: str | QueryCollection, db: str | None = None,
                  **options: Any) -> GroundingSummary:
    """Ground a query collection against a library into LanceDB; ``options`` are the fields of GroundingJob."""
    return GroundingJob(checkpoint, features, queries, db, **options).run()
