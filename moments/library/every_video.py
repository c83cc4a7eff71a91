"""Grounding one new text against every video of a library now (``ground_every_video``, behind
``python -m jobs.search --exhaustive``): exact, and as slow as the library is large; two-stage search
(``moments.search``) answers the same question from a short list of candidates."""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

from drn.errors import InputError
from drn.store import FeatureStore, absolute_uri
from moments.index.db import check_db_writable, default_db_uri
from moments.index.queries import query_rows
from moments.index.results import rank_across_library, top_results
from moments.index.runs import record_run
from moments.index.segments import SEGMENTS_TABLE
from moments.index.table import Index
from moments.library.batches import split_output
from moments.library.grounding import run_record, scored_batches_local, scored_batches_ray
from moments.library.model import check_queries_encodable, encode_query_side, live_query_id, load_model
from moments.library.queries import Query, QueryCollection
from moments.library.ray_data import Resources, WindowOptions, select_videos
from moments.library.scoring import RunLabels
from moments.library.windows import window_rule

IN_PROCESS_MAX_VIDEOS = 256


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
    ranked = rank_across_library(rows)
    if index is not None:
        index.write_queries(query_rows(run_id, model.checkpoint_id, side.ids, side.texts, side.embeddings))
        index.write_segments(ranked)
        index.update_library_ranks(run_id, [query.query_id])
        index.ensure_indices()
        record_run(index.uri, run_record(model, run_id, "live", checkpoint, features))
    return top_results(ranked, k, text=query.text, calibrated=model.negatives_per_positive > 0, min_score=min_score)
