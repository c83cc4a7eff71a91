"""Library-wide grounding on Ray Data into the LanceDB `segments` table, and live grounding of one new query.

``run_grounding`` (behind ``python -m jobs.ground``) scores a query collection against every ``ok`` video of a
feature store and writes the top-k segments of every (query, video) to the index (DESIGN.md sections 7 and 8):

1. The driver checks everything before any work: the queries (blank and repeated ones dropped and reported),
   the checkpoint and its feature dimension against the store's, the LanceDB location and table schema. It
   encodes the queries once (the model's query side and the 384-d MiniLM embedding) and derives the run id.
2. Videos whose rows for every query already exist in the run are skipped (a killed job resumes there).
3. The rest flow through a Ray Data actor pool (``ActorPoolStrategy``); each actor holds the model and the
   encoded queries (put once in the object store) and scores batches of videos against all queries
   (``moments.library.scoring.LibraryScorer``: pooling and the video projection once per video, pairs in batches).
4. The driver merges the rows into LanceDB in batches of ``write_batch_rows`` (``Index.write_segments``: merge on
   (run, query, video, rank), so rewriting is harmless), then computes each segment's library-wide rank per
   query and brings the indices up to date.

``ground_every_video`` grounds one new text against the library now: in-process for small libraries, on the same Ray
Data pipeline above ``in_process_max_videos`` videos, optionally saving the rows to the index.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from drn.checkpoint import model_from_payload, negatives_per_positive, read_checkpoint
from drn.config import DRNConfig
from drn.errors import InputError
from drn.inference import EncodedQueries, Grounder
from drn.store.features import FeatureStore, VideoFeatures, absolute_uri, load_each, open_filesystem
from drn.text.sentence import embed_texts
from moments.index.runs import RunRecord, record_run
from moments.index.table import RESULT_COLUMNS, SEGMENTS_TABLE, Index, default_db_uri, with_match_columns
from moments.library.batches import LibraryProgress, split_output, write_in_batches
from moments.library.queries import Query, QueryCollection, normalise_text, read_queries
from moments.library.scoring import LibraryScorer, QuerySide, RunLabels
from moments.library.windows import WindowRule, window_rule
from pipeline.capacity import DEFAULT_WAIT_S, PipelineNeeds, watch

IN_PROCESS_MAX_VIDEOS = 256
MAX_BLOCKS = 2000


@dataclass
class Resources:
    """How the work is spread: actors (each with the model), their GPUs and CPUs, batch sizes."""

    num_actors: int = 1
    num_gpus_per_actor: float = 0.0
    cpus_per_actor: float = 1.0
    videos_per_batch: int = 16  # videos per actor call (each scored against every query)
    pair_batch_size: int = 256  # (query, window) pairs per forward pass
    capacity_wait_s: float = DEFAULT_WAIT_S  # nodes lost and the actors no longer fit: stop after this long

    def __post_init__(self) -> None:
        if self.num_actors < 1 or self.videos_per_batch < 1 or self.pair_batch_size < 1:
            raise InputError("--num-actors, --videos-per-batch and --pair-batch-size must be at least 1")
        if self.num_gpus_per_actor < 0 or self.cpus_per_actor <= 0:
            raise InputError("--num-gpus-per-actor must be >= 0 and --cpus-per-actor > 0")

    @property
    def device(self) -> str:
        return "cuda" if self.num_gpus_per_actor > 0 else "cpu"


@dataclass
class WindowOptions:
    """Explicit window settings in seconds; None takes the checkpoint's or the dataset's (moments.library.windows)."""

    window_s: float | None = None
    stride_s: float | None = None
    max_whole_s: float | None = None


@dataclass
class LoadedModel:
    """A checkpoint ready to ground with: the grounder, its id (name + content hash) and its recorded metrics."""

    grounder: Grounder
    checkpoint_id: str
    sha256: str
    metrics: dict[str, Any]
    negatives_per_positive: int = 0  # trained with negative pairs (> 0): scores compare across videos

    @property
    def config(self) -> DRNConfig:
        return self.grounder.config


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


# ---------------------------------------------------------------------------------------------------- preparation
def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    fs, inner = open_filesystem(path)  # a local file or an object-store URI
    with fs.open_input_stream(inner) as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def load_model(checkpoint: str | os.PathLike, device: str = "cpu") -> LoadedModel:
    """Load a checkpoint (InputError for a missing or foreign file) and name it ``<file stem>-<sha256[:12]>``."""
    payload = read_checkpoint(checkpoint)  # checks the format first, with a clear message
    model, config, vocab = model_from_payload(payload, checkpoint)
    sha = file_sha256(checkpoint)
    return LoadedModel(Grounder(model, config, vocab, device), f"{Path(checkpoint).stem}-{sha[:12]}", sha,
                       dict(payload.get("metrics") or {}), negatives_per_positive(payload))


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
        "features": os.path.abspath(features) if "://" not in features else features,
        "queries": [[q.query_id, q.text] for q in queries],
        "top_k": top_k,
        "window": [rule.window_s, rule.stride_s, rule.max_whole_s],
        "decode": [model.config.decode.top_per_level, model.config.decode.nms_threshold],
    }
    return "run-" + hashlib.sha256(json.dumps(basis, sort_keys=True).encode()).hexdigest()[:12]


def check_queries_encodable(grounder: Grounder, collection: QueryCollection) -> QueryCollection:
    """Drop (and report) queries the model cannot encode: no known words at all, or too many words."""
    kept, dropped = [], list(collection.dropped)
    for query in collection.queries:
        try:
            grounder.tokenize([query.text])
        except InputError as error:
            dropped.append((query.line, f"{str(error).replace('query 0', f'query {query.query_id}')}, skipped"))
            continue
        kept.append(query)
    if not kept:
        if len(collection.queries) == 1 and dropped:
            raise InputError(dropped[-1][1].removesuffix(", skipped"), path=collection.source)
        raise InputError("no query of the collection can be encoded by this checkpoint", path=collection.source)
    return QueryCollection(collection.source, kept, dropped)


def encode_query_side(grounder: Grounder, queries: Sequence[Query]) -> QuerySide:
    """The model's query side and the MiniLM embedding of each query, once for the whole run."""
    texts = [q.text for q in queries]
    return QuerySide([q.query_id for q in queries], texts, embed_texts(texts), grounder.encode_queries(texts))


def select_videos(store: FeatureStore, videos: str | Sequence[str] | None) -> list[str]:
    """The ``ok`` videos to ground, in shard order: all, or those named by a list, a comma list or a file."""
    ok = store.ok_video_ids()
    if videos is None:
        wanted = ok
    else:
        if isinstance(videos, str):  # a file (one id a line) or a comma-separated list, however long
            names = Path(videos).read_text().splitlines() if _is_local_file(videos) else videos.split(",")
        else:
            names = list(videos)
        wanted = list(dict.fromkeys(n.strip() for n in names if n.strip()))
        if not wanted:
            raise InputError("--videos names no video")
        unknown = sorted(set(wanted) - set(ok))
        if unknown:
            shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
            raise InputError(f"{len(unknown)} requested video(s) are not ok videos of the feature store: {shown}",
                             path=store.uri)
    shard_of = dict(zip(store.videos()["video_id"].to_pylist(), store.videos()["shard"].to_pylist(), strict=True))
    return sorted(wanted, key=lambda vid: (shard_of.get(vid, ""), vid))


def _is_local_file(text: str) -> bool:
    """Whether ``text`` names an existing local file; False (never an error) for text that cannot be a path."""
    return "://" not in text and os.path.isfile(text)


def check_db_writable(uri: str) -> None:
    """InputError before any work when a local LanceDB folder cannot be created or written."""
    if "://" in uri and not uri.startswith("file://"):
        return  # object stores answer on the first write
    path = Path(uri.removeprefix("file://"))
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise InputError(f"the LanceDB location is not writable: {error.strerror or error}", path=uri) from None


def _sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def completed_videos(index: Index, run_id: str, query_ids: Sequence[str]) -> set[str]:
    """Videos that already have rows of every query in the run (their rank-0 rows are there)."""
    if index.count(run_id=run_id) == 0:
        return set()
    found = (index.table.search().where(f"run_id = {_sql_text(run_id)} AND rank = 0")
             .select(["video_id", "query_id"]).limit(None).to_arrow())
    wanted = set(query_ids)
    seen: dict[str, set[str]] = {}
    for vid, qid in zip(found.column("video_id").to_pylist(), found.column("query_id").to_pylist(), strict=True):
        if qid in wanted:
            seen.setdefault(vid, set()).add(qid)
    return {vid for vid, ids in seen.items() if len(ids) == len(wanted)}


# ---------------------------------------------------------------------------------------------------- scoring
def load_videos(store: FeatureStore, video_ids: Iterable[str]) -> tuple[list[VideoFeatures], list[tuple[str, str]]]:
    """The videos that load, and ``(video_id, error)`` for those that do not."""
    return load_each(store.load, video_ids)


def model_payload(grounder: Grounder) -> dict[str, Any]:
    """What an actor needs to rebuild the model: config, vocabulary record, weights (CPU tensors), training facts
    (the shape of a checkpoint, so ``drn.checkpoint.model_from_payload`` reads both)."""
    state = {k: v.detach().cpu() for k, v in grounder.model.state_dict().items()}
    config = grounder.config
    return {"config": config.to_dict(), "vocabulary": grounder.vocab.record(), "state_dict": state,
            "training": {"negatives_per_positive": config.train.negatives.per_positive}}


def grounder_from_payload(payload: dict[str, Any], device: str) -> Grounder:
    model, config, vocab = model_from_payload(payload, "grounding job")
    return Grounder(model, config, vocab, device)


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


def start_ray() -> None:
    """Join RAY_ADDRESS or the job's cluster under `ray job submit`; start a local Ray otherwise."""
    import ray

    if not ray.is_initialized():
        ray.init()


def videos_through_actors(actor: type, video_ids: list[str], resources: Resources, constructor_args: tuple) -> Any:
    """A Ray Data dataset that sends ``video_ids`` in batches of ``resources.videos_per_batch`` through a pool of
    ``resources.num_actors`` ``actor``s (built with ``constructor_args``), each with the resources' CPUs and GPUs."""
    import ray

    blocks = max(1, min(MAX_BLOCKS, -(-len(video_ids) // resources.videos_per_batch)))
    dataset = ray.data.from_items([{"video_id": vid} for vid in video_ids], override_num_blocks=blocks)
    return dataset.map_batches(
        actor,
        batch_size=int(resources.videos_per_batch),
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=resources.num_actors),
        num_cpus=resources.cpus_per_actor,
        num_gpus=resources.num_gpus_per_actor if resources.num_gpus_per_actor > 0 else None,
        fn_constructor_args=constructor_args,
    )


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


# ---------------------------------------------------------------------------------------------------- the batch job
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
            raise InputError(f"--top-k must be at least 1, not {self.top_k}")
        if self.write_batch_rows < 1:
            raise InputError("--write-batch-rows must be at least 1")
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
        if self.overwrite and index.count(run_id=run_id):
            index.table.delete(f"run_id = {_sql_text(run_id)}")
        todo = summary.to_do(video_ids, completed_videos(index, run_id, collection.ids), self.max_videos)
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


# ---------------------------------------------------------------------------------------------------- live
def live_query_id(text: str) -> str:
    """A stable id for a live query: ``live-`` and a hash of its normalised words."""
    return "live-" + hashlib.sha256(normalise_text(text).encode()).hexdigest()[:12]


def ground_every_video(
    text: str,
    checkpoint: str,
    features: str,
    k: int = 10,
    videos: str | Sequence[str] | None = None,
    *,
    top_k: int = 5,
    min_score: float | None = None,
    save: bool = False,
    db: str | None = None,
    table: str = SEGMENTS_TABLE,
    run_id: str | None = None,
    windows: WindowOptions | None = None,
    resources: Resources | None = None,
    in_process_max_videos: int = IN_PROCESS_MAX_VIDEOS,
) -> pa.Table:
    """Ground one new ``text`` against every ``ok`` video (or ``videos``) now; the ``k`` best segments of the library.

    Each video contributes its ``top_k`` segments (as in the batch job); the result holds the ``k`` best of them
    by score (ties: video id, then rank), with ``result_rank`` and the columns of ``moments.index.table.RESULT_COLUMNS``
    (``library_rank`` = ``result_rank`` before the ``min_score`` filter). Up to ``in_process_max_videos`` videos
    are scored in this process; more run on Ray Data. With ``save`` every row (all videos, ``top_k`` each) is
    merged into the index at ``db`` under ``run_id`` (default ``live-<checkpoint id>``), with library ranks.
    """
    if k < 1 or top_k < 1:
        raise InputError(f"k and top_k must be at least 1, not {k} and {top_k}")
    if not isinstance(text, str) or not text.strip():
        raise InputError("the query text is empty; give some words to search for")
    resources = resources or Resources()
    windows = windows or WindowOptions()
    model = load_model(checkpoint)
    store = FeatureStore(features)
    model.grounder.check_features(store.metadata.feature_dim, features)
    query = Query(live_query_id(text), " ".join(text.split()))
    check_queries_encodable(model.grounder, QueryCollection("the query text", [query]))
    rule = window_rule(model.config, model.metrics, window_s=windows.window_s, stride_s=windows.stride_s,
                       max_whole_s=windows.max_whole_s)
    video_ids = select_videos(store, videos)
    run_id = run_id or f"live-{model.checkpoint_id}"
    index = None
    if save:
        uri = db or default_db_uri()
        check_db_writable(uri)
        index = Index(uri, table=table)
    side = encode_query_side(model.grounder, [query])
    labels = RunLabels(run_id, model.checkpoint_id)
    if len(video_ids) <= in_process_max_videos:
        batches = scored_batches_local(model, side, store, video_ids, rule, labels, top_k, resources)
    else:
        batches = scored_batches_ray(model, side, absolute_uri(features), video_ids, rule, labels, top_k, resources)
    parts = [split_output(output)[0] for output in batches]
    rows = pa.concat_tables(parts) if parts else None
    if rows is None or rows.num_rows == 0:
        raise InputError("no video of the feature store could be grounded", path=features)
    ranked = rows.sort_by([("score", "descending"), ("video_id", "ascending"), ("rank", "ascending")])
    ranked = ranked.set_column(ranked.schema.get_field_index("library_rank"), "library_rank",
                               pa.array(np.arange(ranked.num_rows, dtype=np.int32)))
    if index is not None:
        index.write_segments(ranked)
        index.update_library_ranks(run_id, [query.query_id])
        index.ensure_indices()
        record_run(index.uri, run_record(model, run_id, "live", checkpoint, features))
    best = ranked.slice(0, k)
    if min_score is not None:
        best = best.filter(pc.greater_equal(best.column("score"), pa.scalar(float(min_score), pa.float32())))
    best = best.select(list(RESULT_COLUMNS))
    best = best.add_column(0, "result_rank", pa.array(np.arange(best.num_rows, dtype=np.int32)))
    return with_match_columns(best, query.text, 1.0, "same", model.negatives_per_positive > 0)
