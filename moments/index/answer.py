"""Search over stored queries: the grounded moments that answer a free-text search, with what a user must know.

``answer_search(segments, queries, ...)`` (behind ``Index.answer``):

1. Find the stored queries nearest to the text in the `queries` table (one row per run and query): in meaning
   (cosine on the MiniLM query embedding) and in words (BM25 full text on query_text, when its index exists);
   keep those with segments that pass the filters (one lookup in `segments` by run_id and query_id) and fuse
   the two lists by reciprocal rank fusion: relevance = sum over lists of 1 / (60 + position).
2. Return up to ``k`` segments of those queries, read from `segments` through its scalar indices, stored queries
   that are the searched text first. Neither step reads more than the candidate queries' rows, so the cost does
   not grow with the number of segment rows.
3. Say so when no stored query is the searched text, when a run's scores do not compare across videos and when
   a run keeps fewer moments per query than ``k`` (``SearchAnswer.notices``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from drn.errors import InputError
from drn.text import query_key
from drn.text.sentence import embed_text, is_blank
from moments.index.catalogue import QueryCatalogue
from moments.index.db import in_list, sql_literal
from moments.index.queries import (
    EMBEDDING_COLUMN,
    HIT_COLUMNS,
    QUERY_ROW_KEY,
    TOP_MOMENTS,
    TOP_MOMENTS_COLUMN,
    QueriesTable,
    SearchView,
    embedding_matrix,
)
from moments.index.results import MATCH_FIELDS, RESULT_COLUMNS, empty_result
from moments.index.runs import RunRecord
from moments.index.segments import segments_schema

RRF_K = 60
# A stored query counts as the searched text when its words are the same, or its MiniLM cosine is at least this.
# Measured on Charades-STA: rewordings sit at 0.96-0.99 ("person opening a window" / "the person opens a window"
# 0.974), while one-word changes of meaning sit below ("the red square moves left" / "... moves right" 0.950,
# "the red ball rises" / "the blue ball rises" 0.770, "person opens the door" / "person closes the door" 0.873).
SAME_QUERY_COSINE = 0.97
# Candidate queries read per list when the segments reject some: grown 4x a round up to this.
MAX_CANDIDATE_ROWS = 16_384
# With a video filter, up to this many (run, query) keys with moments there are ranked among themselves.
MAX_PASSING_KEYS = 2048


def answer_search(
    segments: Any, queries: QueriesTable, runs: Callable[[], dict[str, RunRecord]], text: str, k: int = 10, *,
    video_id: str | None = None, min_score: float | None = None, run_id: str | None = None,
) -> SearchAnswer:
    """The best stored segments of the `segments` table for a free-text search, found through its ``queries``
    table (``runs``: the runs table's records, read when rows are found), with what a user must know about them.

    1. Find the stored queries nearest to `text` in meaning (cosine on the MiniLM query embedding) and in
       words (BM25 full text on query_text, when its index exists), one candidate per (run, query) that has
       segments passing the filters (its best row in the library, or in `video_id`, scoring at least
       `min_score`, in `run_id`), and fuse the two lists by reciprocal rank fusion: relevance = sum over lists
       of 1 / (60 + position).
    2. Return up to `k` segments of those queries: stored queries that are the searched text first (the same
       words, or a MiniLM cosine >= SAME_QUERY_COSINE), then the others, each group in relevance order, each
       query's segments best score first (its best across the library, or within `video_id`), filtered by
       `min_score` and `run_id`. Columns: RESULT_COLUMNS plus result_rank, matched_query (the stored query
       whose moments a row shows), query_similarity (cosine), query_match ("same", "paraphrase" or "other"),
       query_relevance (the fused score) and calibrated (the run's checkpoint was trained with negative
       pairs, so its scores compare across videos; null when the index does not record it).
    3. Say so when no stored query is the searched text (never another query's moments as the answer
       without that mark), when a run's scores do not compare across videos, and when a run keeps fewer
       moments per query than `k` (``SearchAnswer.notices``).
    """
    if k < 1:
        raise InputError(f"k must be at least 1, got {k}")
    if is_blank(text):
        raise InputError("query text is empty; give some words to search for")
    embedding = _Embedding(text)  # embedded on first use: the full-text list is already being read by then
    best_rows = _best_row_filter(video_id=video_id, min_score=min_score, run_id=run_id)
    stored = queries.open()
    if stored is None:
        if segments.count_rows():
            raise InputError(f"there is no table '{queries.name}' beside the segments: write each run's queries "
                             "(Index.write_queries; jobs.ground does)", path=queries.uri)
        found = {}
    else:
        found = _nearest_queries(segments, queries, text, embedding, best_rows, run_id, max(2 * k, 20),
                                 in_video=video_id is not None, min_score=min_score)
    searched = query_key(text)
    for hit in found.values():
        hit["match"] = match_kind(searched, hit["text"], hit["similarity"])
    nearest = max(found.values(), key=lambda hit: hit["similarity"], default=None)
    answer = SearchAnswer(text, empty_result(), nearest["text"] if nearest else None,
                          nearest["similarity"] if nearest else None,
                          any(hit["match"] != "other" for hit in found.values()),
                          filtered=any(f is not None for f in (video_id, min_score, run_id)), k=k)
    if not found:
        return answer
    chosen = sorted(found.values(), key=lambda hit: (hit["match"] == "other", -hit["relevance"],
                                                     -hit["similarity"]))[:k]
    records = runs()
    answer.rows = _best_segments(segments, records, chosen, k, video_id=video_id, min_score=min_score)
    answered = sorted(set(answer.rows.column("run_id").to_pylist()))
    answer.keep_per_query = {run: records[run].keep_per_query for run in answered
                             if run in records and 0 < records[run].keep_per_query < k}
    return answer


def match_kind(searched_key: str, stored_text: str, similarity: float) -> str:
    """How a stored query relates to the searched text: "same" words (``drn.text.vocabulary.query_key``), a "paraphrase"
    (MiniLM cosine >= SAME_QUERY_COSINE) or an "other" query whose moments answer a different sentence."""
    if _stored_key(stored_text) == searched_key:
        return "same"
    return "paraphrase" if similarity >= SAME_QUERY_COSINE else "other"


class _Embedding:
    """The searched text's MiniLM vector, computed on the first call (``drn.text.sentence.embed_text``) and kept."""

    def __init__(self, text: str) -> None:
        self.text = text
        self._vector: np.ndarray | None = None

    def __call__(self) -> np.ndarray:
        if self._vector is None:
            self._vector = embed_text(self.text)
        return self._vector


@functools.lru_cache(maxsize=65_536)
def _stored_key(stored_text: str) -> str:
    """``query_key`` of a stored query's text: the same few stored texts come back search after search."""
    return query_key(stored_text)


@dataclass
class SearchAnswer:
    """Rows of a search and the facts a user must see beside them (``notices``)."""

    text: str
    rows: pa.Table
    nearest_query: str | None  # the stored query nearest in meaning, whatever the filters kept
    nearest_similarity: float | None
    grounded: bool  # some stored query is the searched text (the same words or a close paraphrase)
    filtered: bool = False  # the search had filters (video, min_score, run): "grounded" holds within them
    k: int = 0  # the rows asked for
    keep_per_query: dict[str, int] = field(default_factory=dict)  # runs of the rows that keep fewer than k per query

    @classmethod
    def of_live_search(cls, text: str, rows: pa.Table) -> SearchAnswer:
        """The answer of a search that grounded ``text`` itself (two-stage or every video): its rows are the text's
        own moments, so the only notices are those of the checkpoint's calibration."""
        return cls(text, rows, nearest_query=text, nearest_similarity=1.0, grounded=True)

    def notices(self, live_hint: str = "ground it with --live or add it to the collection") -> list[str]:
        """One line each: the text was never grounded; a run's scores do not compare across videos; a run keeps
        fewer moments per query than were asked for."""
        lines = []
        if not self.grounded:
            nearest = (f'; nearest "{self.nearest_query}" ({self.nearest_similarity:.2f})'
                       if self.nearest_query is not None else "")
            within = " with these filters" if self.filtered else ""
            lines.append(f'no grounded query matches "{self.text}"{within}{nearest}; {live_hint}')
        if self.rows.num_rows:
            runs = dict(zip(self.rows.column("run_id").to_pylist(), self.rows.column("calibrated").to_pylist(),
                            strict=True))
            for run, calibrated in runs.items():
                if calibrated is None:
                    lines.append(f"run {run}: the index does not record how its checkpoint was trained (written "
                                 "before runs were recorded); its scores may not compare across videos")
                elif not calibrated:
                    lines.append(f"run {run}: its checkpoint was trained without negative pairs, so its scores rank "
                                 "moments within a video, not videos across the library (retrain with "
                                 "train.negatives.per_positive > 0)")
        for run, kept in sorted(self.keep_per_query.items()):
            lines.append(f"run {run}: it keeps only the {kept} best moments of each query across the library "
                         f"(--keep-per-query {kept}), fewer than the {self.k} asked for; showing what is there")
        return lines


def _nearest_queries(
    segments: Any, queries: QueriesTable, text: str, embedding: _Embedding, best_rows: str, run_id: str | None,
    candidates: int, *, in_video: bool = False, min_score: float | None = None,
) -> dict[tuple[str, str], dict[str, Any]]:
    """The stored queries nearest to the text in meaning and in words, fused by RRF, each with segments that pass
    ``best_rows``; each list keeps its ``2 * candidates`` best such queries.

    The lists come from the queries table, and one indexed lookup in `segments` (by run_id and query_id)
    confirms their keys; when it rejects some, the lists are read again four times longer until they fill (up
    to MAX_CANDIDATE_ROWS). Without a video filter, a query whose row holds its ``top_moments`` needs no lookup:
    its best moment is the first of them. With a video filter (``in_video``) few queries may have moments in that
    video: when the scalar indices count at most MAX_PASSING_KEYS, their keys are read and ranked among
    themselves."""
    view = queries.search_view()
    table = view.table
    where = f"run_id = {sql_literal(run_id)}" if run_id is not None else None
    wanted = 2 * candidates
    if in_video and segments.count_rows(best_rows) <= MAX_PASSING_KEYS:
        passing = _with_best_rows(segments, None, best_rows)
        vector = embedding()
        return _fused(_lists_among(table, text, vector, passing, where, wanted, view.full_text_indexed), vector)
    columns = [*_COLUMNS, TOP_MOMENTS_COLUMN] if not in_video and view.has_top_moments else _COLUMNS
    limit = wanted
    while True:
        lists = _ranked_lists(view, text, embedding, where, limit, columns, run_id)
        passing = _passing(segments, lists, best_rows, min_score)
        kept = [_only(hits, passing, wanted) for hits in lists]
        if limit >= MAX_CANDIDATE_ROWS or all(hits.num_rows < limit or len(hits_kept) >= wanted
                                              for hits, hits_kept in zip(lists, kept, strict=True)):
            return _fused(kept, embedding())
        limit *= 4


def _ranked_lists(view: SearchView, text: str, embedding: _Embedding, where: str | None, limit: int,
                  columns: list[str], run_id: str | None = None) -> list[pa.Table]:
    """The stored queries nearest in meaning (and in words, when indexed), ``limit`` each, with ``columns``
    (``where``: the SQL filter of ``run_id``).

    The two lists (vector and full text, at once: LanceDB's work runs outside the GIL) read keys and row ids
    only; the other columns come from the queries' catalogue (``moments.index.catalogue``), or, above its size,
    from one take by row id for the lists' union. Reading those columns inside each list costs about twice as
    much (benchmarks/RESULTS.md, issue 20). On a small table the catalogue gives the vector list too, by exact
    cosine in memory. Where a row id no longer holds its key (the table moved between the reads), the lists are
    read again whole."""
    table, keys_only = view.table, list(QUERY_ROW_KEY)
    nearest: Callable[..., pa.Table] = _vector_hits
    if view.catalogue is not None and view.catalogue.unit_vectors is not None:
        nearest = functools.partial(_catalogue_hits, view.catalogue, run_id)
    reads = [(nearest, embedding), (_word_hits, text)] if view.full_text_indexed else [(nearest, embedding)]
    lists = _read_lists(table, reads, where, limit, keys_only, True)
    detailed = _with_columns(view, lists, [name for name in columns if name not in keys_only])
    return detailed if detailed is not None else _read_lists(table, reads, where, limit, columns, False)


def _read_lists(table: Any, reads: list[tuple[Callable[..., pa.Table], Any]], where: str | None, limit: int,
                columns: list[str], row_ids: bool) -> list[pa.Table]:
    """The lists of ``reads`` ((function, vector or text) pairs), the later ones on the pool while the first runs."""
    later = [_pool().submit(read, table, by, where, limit, columns, row_ids) for read, by in reads[1:]]
    first, by = reads[0]
    return [first(table, by, where, limit, columns, row_ids), *(future.result() for future in later)]


def _with_columns(view: SearchView, lists: list[pa.Table], columns: list[str]) -> list[pa.Table] | None:
    """Each list of hits (keys and ``_rowid``) with its rows' keys and ``columns``: from the catalogue, else read
    in one take by row id; None when a row id is gone or holds another key."""
    names = [*QUERY_ROW_KEY, *columns]
    wanted = [hits.column("_rowid").to_pylist() for hits in lists]
    if view.catalogue is not None and all(name in view.catalogue.rows.column_names for name in names):
        found = [view.catalogue.take(row_ids) for row_ids in wanted]
        if any(rows is None for rows in found):
            return None
        detailed = [rows.select(names) for rows in found]
    else:
        ids = sorted({row_id for row_ids in wanted for row_id in row_ids})
        if not ids:
            return [hits.select(list(QUERY_ROW_KEY)) for hits in lists]
        rows = view.table.take_row_ids(ids).select(names).with_row_id().to_arrow()
        position = {row_id: place for place, row_id in enumerate(rows.column("_rowid").to_pylist())}
        if any(row_id not in position for row_ids in wanted for row_id in row_ids):
            return None
        rows = rows.select(names)
        detailed = [rows.take(pa.array([position[row_id] for row_id in row_ids], pa.int64())) for row_ids in wanted]
    same = all(_keys(rows) == _keys(hits) for rows, hits in zip(detailed, lists, strict=True))
    return detailed if same else None


@functools.lru_cache(maxsize=1)
def _pool() -> ThreadPoolExecutor:
    """The threads that read the full-text list while the caller reads the vector list."""
    return ThreadPoolExecutor(max_workers=4, thread_name_prefix="query-lists")


def _passing(segments: Any, lists: list[pa.Table], best_rows: str, min_score: float | None) -> set[tuple[str, str]]:
    """The keys of the hits that have a segment passing ``best_rows``: from their ``top_moments`` where the hits
    hold them (the best moment, at least ``min_score``), else by one lookup in `segments`."""
    passing: set[tuple[str, str]] = set()
    unknown: set[tuple[str, str]] = set()
    for hits in lists:
        if TOP_MOMENTS_COLUMN not in hits.column_names:
            unknown.update(_keys(hits))
            continue
        known, best = _best_moment_scores(hits.column(TOP_MOMENTS_COLUMN))
        for key, held, score in zip(_keys(hits), known.tolist(), best.tolist(), strict=True):
            if not held:
                unknown.add(key)
            elif score == score and (min_score is None or score >= min_score):  # NaN: no moment at all
                passing.add(key)
    return passing | _with_best_rows(segments, unknown - passing, best_rows)


def _best_moment_scores(moments: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """For each row's ``top_moments`` (a list in library_rank order): whether it is known (not null), and the
    score of its first moment (NaN where the list is empty or null)."""
    column = moments.combine_chunks()
    known = column.is_valid().to_numpy(zero_copy_only=False)
    offsets = column.offsets.to_numpy()
    scores = pc.struct_field(column.values, "score").to_numpy(zero_copy_only=False).astype(np.float64)
    best = np.full(len(column), np.nan)
    held = known & (offsets[1:] > offsets[:-1])
    best[held] = scores[offsets[:-1][held]]
    return known, best


def _fused(lists: list[pa.Table], vector: np.ndarray) -> dict[tuple[str, str], dict[str, Any]]:
    """Reciprocal rank fusion of ranked lists of stored queries, with each query's cosine to the text (and its
    checkpoint and ``top_moments`` where the lists hold them)."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for hits in lists:
        if hits.num_rows == 0:
            continue
        similarity = embedding_matrix(hits) @ vector
        checkpoints = hits.column("checkpoint_id").to_pylist()
        moments = (hits.column(TOP_MOMENTS_COLUMN).combine_chunks() if TOP_MOMENTS_COLUMN in hits.column_names
                   else pa.nulls(hits.num_rows, pa.list_(pa.null())))
        for position, (key, sim, stored, checkpoint, top) in enumerate(
                zip(_keys(hits), similarity.tolist(), hits.column("query_text").to_pylist(), checkpoints, moments,
                    strict=True), start=1):
            hit = found.setdefault(key, {"key": key, "relevance": 0.0, "similarity": sim, "text": stored,
                                         "checkpoint_id": checkpoint,
                                         "moments": top if top.is_valid else None})
            hit["relevance"] += 1.0 / (RRF_K + position)
    return found


def _lists_among(queries: Any, text: str, vector: np.ndarray, keys: set[tuple[str, str]], where: str | None,
                 count: int, words: bool) -> list[pa.Table]:
    """The ``count`` nearest of the stored queries ``keys`` by cosine (exact), and by words when indexed."""
    if not keys:
        return []
    among = " AND ".join(part for part in (where, in_list("query_id", sorted({q for _, q in keys}))) if part)
    stored = queries.search().where(among).select(_COLUMNS).limit(None).to_arrow()
    stored = _only(stored, keys, stored.num_rows)
    order = np.argsort(-(embedding_matrix(stored) @ vector), kind="stable")[:count]
    lists = [stored.take(pa.array(order, pa.int64()))]
    if words:
        lists.append(_only(_word_hits(queries, text, among, max(stored.num_rows, 1)), keys, count))
    return lists


_COLUMNS = list(HIT_COLUMNS)


def _vector_hits(queries: Any, vector: np.ndarray | _Embedding, where: str | None, limit: int,
                 columns: list[str] = _COLUMNS, row_ids: bool = False) -> pa.Table:
    if isinstance(vector, _Embedding):
        vector = vector()
    search = queries.search(vector, vector_column_name=EMBEDDING_COLUMN, query_type="vector").distance_type("cosine")
    if where is not None:
        search = search.where(where, prefilter=True)
    if row_ids:
        search = search.with_row_id(True)
    return search.select([*columns, "_distance"]).limit(limit).to_arrow()


def _catalogue_hits(catalogue: QueryCatalogue, run_id: str | None, queries: Any, vector: np.ndarray | _Embedding,
                    where: str | None, limit: int, columns: list[str] = _COLUMNS, row_ids: bool = False) -> pa.Table:
    """``_vector_hits`` from the catalogue's unit vectors (exact cosine; ``where`` is the filter of ``run_id``)."""
    hits = catalogue.nearest(vector() if isinstance(vector, _Embedding) else vector, limit, columns, run_id)
    return hits if row_ids else hits.drop_columns(["_rowid"])


def _word_hits(queries: Any, text: str, where: str | None, limit: int, columns: list[str] = _COLUMNS,
               row_ids: bool = False) -> pa.Table:
    search = queries.search(text.strip(), query_type="fts", fts_columns="query_text")
    if where is not None:
        search = search.where(where, prefilter=True)
    if row_ids:
        search = search.with_row_id(True)
    return search.select([*columns, "_score"]).limit(limit).to_arrow()


def _keys(hits: pa.Table) -> list[tuple[str, str]]:
    return list(zip(hits.column("run_id").to_pylist(), hits.column("query_id").to_pylist(), strict=True))


def _only(hits: pa.Table, keys: set[tuple[str, str]], count: int) -> pa.Table:
    """The first ``count`` rows of ``hits`` whose key is in ``keys``."""
    positions = [at for at, key in enumerate(_keys(hits)) if key in keys][:count]
    return hits.take(pa.array(positions, pa.int64()))


def _with_best_rows(segments: Any, keys: set[tuple[str, str]] | None, best_rows: str) -> set[tuple[str, str]]:
    """The (run, query) ``keys`` (None: all) that have a segment row matching ``best_rows``, by the scalar indices
    on run_id, query_id, video_id, rank and library_rank."""
    if keys is None:
        rows = segments.search().where(best_rows).select(["run_id", "query_id"]).limit(None).to_arrow()
        return set(_keys(rows))
    if not keys:
        return set()
    where = " AND ".join([in_list("run_id", sorted({run for run, _ in keys})),
                          in_list("query_id", sorted({query for _, query in keys})), f"({best_rows})"])
    rows = segments.search().where(where).select(["run_id", "query_id"]).limit(None).to_arrow()
    return set(_keys(rows)) & keys


def _best_segments(
    table: Any, records: dict[str, RunRecord], chosen: list[dict[str, Any]], k: int, *,
    video_id: str | None, min_score: float | None,
) -> pa.Table:
    """Up to ``k`` segments of the chosen queries, in their order, each query's best score first: from their
    ``top_moments`` when they hold them and ``k`` <= TOP_MOMENTS without a video filter, else from `segments`."""
    if video_id is None and k <= TOP_MOMENTS and all(hit["moments"] is not None for hit in chosen):
        rows = _rows_of_top_moments(chosen, k, min_score)
    else:
        rows = _rows_of_segments(table, chosen, k, video_id=video_id, min_score=min_score)
    rows = rows.sort_by([("_order", "ascending"), ("score", "descending"), ("video_id", "ascending"),
                         ("rank", "ascending")]).slice(0, k)
    picked = [chosen[position] for position in rows.column("_order").to_pylist()]
    schema = segments_schema()
    result = pa.table({name: rows.column(name).cast(schema.field(name).type) for name in RESULT_COLUMNS})
    result = result.add_column(0, "result_rank", pa.array(range(result.num_rows), pa.int32()))
    values = ([hit["text"] for hit in picked], [hit["similarity"] for hit in picked],
              [hit["match"] for hit in picked], [hit["relevance"] for hit in picked],
              [records[run].calibrated if run in records else None for run in result.column("run_id").to_pylist()])
    for match_field, column in zip(MATCH_FIELDS, values, strict=True):
        result = result.append_column(match_field, pa.array(column, match_field.type))
    return result


def _rows_of_top_moments(chosen: list[dict[str, Any]], k: int, min_score: float | None) -> pa.Table:
    """The chosen queries' moments with library_rank < k (scoring at least ``min_score``), from ``top_moments``,
    with ``_order``: the query's position among the chosen."""
    rows = []
    for order, hit in enumerate(chosen):
        run, query = hit["key"]
        for moment in hit["moments"].as_py():  # an Arrow list scalar: only the chosen queries' become Python
            if moment["library_rank"] < k and (min_score is None or moment["score"] >= min_score):
                rows.append({**moment, "run_id": run, "query_id": query, "query_text": hit["text"],
                             "checkpoint_id": hit["checkpoint_id"], "_order": order})
    schema = segments_schema()
    fields = [schema.field(name) for name in RESULT_COLUMNS]
    return pa.Table.from_pylist(rows, schema=pa.schema([*fields, pa.field("_order", pa.int64())]))


def _rows_of_segments(table: Any, chosen: list[dict[str, Any]], k: int, *, video_id: str | None,
                      min_score: float | None) -> pa.Table:
    """The chosen queries' best segments read from `segments` (library_rank < k, or rank < k in ``video_id``),
    with ``_order``: the query's position among the chosen."""
    keys = [hit["key"] for hit in chosen]
    where = [in_list("run_id", sorted({run for run, _ in keys})),
             in_list("query_id", sorted({query for _, query in keys}))]
    if video_id is not None:
        where += [f"video_id = {sql_literal(video_id)}", f"rank < {int(k)}"]
    else:
        where.append(f"(library_rank < {int(k)} OR library_rank IS NULL)")
    if min_score is not None:
        where.append(f"score >= {float(min_score)!r}")
    rows = table.search().where(" AND ".join(where)).select(list(RESULT_COLUMNS)).limit(None).to_arrow()
    order = {hit["key"]: position for position, hit in enumerate(chosen)}
    positions = [order.get(key, -1) for key in _keys(rows)]
    rows = rows.append_column("_order", pa.array(positions, pa.int64()))
    return rows.filter(pc.greater_equal(rows.column("_order"), 0))



def _best_row_filter(*, video_id: str | None, min_score: float | None, run_id: str | None) -> str:
    """Rows that stand for one (run, query): its best segment in the library, or in one video."""
    if video_id is not None:
        parts = [f"video_id = {sql_literal(video_id)}", "rank = 0"]
    else:
        parts = ["(library_rank = 0 OR (library_rank IS NULL AND rank = 0))"]
    if run_id is not None:
        parts.append(f"run_id = {sql_literal(run_id)}")
    if min_score is not None:
        if not math.isfinite(min_score):
            raise InputError(f"min_score must be a finite number, got {min_score}")
        parts.append(f"score >= {float(min_score)!r}")
    return " AND ".join(parts)
