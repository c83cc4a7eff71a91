"""The LanceDB `segments` table of grounded moments and search over it (DESIGN.md section 7).

One row per (run, query, video, rank): the segment's start and end in seconds, its final, matching and IoU
scores, the query text with its 384-d MiniLM embedding, the checkpoint id and the run id, plus the segment's
rank among all segments of its query across the library (`library_rank`). Writes merge on the row key, so a
batch written twice, or a killed job resumed, leaves every key exactly once.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lancedb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from lancedb.index import FTS, Bitmap, BTree, IvfPq

from drn.errors import InputError
from drn.store.object_store import lancedb_storage_options
from drn.text.sentence import EMBEDDING_DIM, embed_text
from drn.text.vocabulary import query_key
from moments.index.runs import RunRecord, read_runs

SEGMENTS_TABLE = "segments"
ROW_KEY = ("run_id", "query_id", "video_id", "rank")
VECTOR_INDEX_MIN_ROWS = 100_000
RRF_K = 60
# A stored query counts as the searched text when its words are the same, or its MiniLM cosine is at least this.
# Measured on Charades-STA: rewordings sit at 0.96-0.99 ("person opening a window" / "the person opens a window"
# 0.974), while one-word changes of meaning sit below ("the red square moves left" / "... moves right" 0.950,
# "the red ball rises" / "the blue ball rises" 0.770, "person opens the door" / "person closes the door" 0.873).
SAME_QUERY_COSINE = 0.97
_REQUIRED = (
    "run_id", "checkpoint_id", "query_id", "query_text", "query_embedding", "video_id", "rank",
    "start_s", "end_s", "score", "match_score", "iou_score",
)
_SCALAR_INDICES = (("video_id", BTree), ("query_id", BTree), ("run_id", Bitmap), ("rank", Bitmap),
                   ("library_rank", BTree))
RESULT_COLUMNS = ("run_id", "query_id", "query_text", "video_id", "start_s", "end_s", "score", "match_score",
                  "iou_score", "rank", "library_rank", "checkpoint_id")


def segments_schema() -> pa.Schema:
    """The Arrow schema of the `segments` table."""
    return pa.schema(
        [
            pa.field("run_id", pa.string()),
            pa.field("checkpoint_id", pa.string()),
            pa.field("query_id", pa.string()),
            pa.field("query_text", pa.string()),
            pa.field("query_embedding", pa.list_(pa.float32(), EMBEDDING_DIM)),
            pa.field("video_id", pa.string()),
            pa.field("rank", pa.int32()),
            pa.field("library_rank", pa.int32()),
            pa.field("start_s", pa.float64()),
            pa.field("end_s", pa.float64()),
            pa.field("score", pa.float32()),
            pa.field("match_score", pa.float32()),
            pa.field("iou_score", pa.float32()),
        ]
    )


def segment_rows(
    run_id: str,
    checkpoint_id: str,
    query_id: str | int,
    query_text: str,
    query_embedding: Sequence[float] | np.ndarray,
    video_id: str,
    segments: np.ndarray | Sequence[Sequence[float]],
) -> list[dict[str, Any]]:
    """Rows for one (query, video) from grounding output `segments[K, 5]` = (start_s, end_s, score, match, iou).

    Ranks 0..K-1 follow the score, best first; `library_rank` is left empty (see `Index.update_library_ranks`).
    """
    array = np.asarray(segments, dtype=np.float64)
    if array.ndim != 2 or (array.size and array.shape[1] != 5):
        raise InputError(f"segments must be [K, 5] (start_s, end_s, score, match, iou), got shape {array.shape}")
    if not query_text or not query_text.strip():
        raise InputError(f"query {query_id}: the query text is empty")
    embedding = np.asarray(query_embedding, dtype=np.float32).reshape(-1).tolist()
    order = np.argsort(-array[:, 2], kind="stable") if array.size else np.zeros(0, dtype=np.int64)
    return [
        {
            "run_id": str(run_id),
            "checkpoint_id": str(checkpoint_id),
            "query_id": str(query_id),
            "query_text": query_text,
            "query_embedding": embedding,
            "video_id": str(video_id),
            "rank": rank,
            "library_rank": None,
            "start_s": float(array[row, 0]),
            "end_s": float(array[row, 1]),
            "score": float(array[row, 2]),
            "match_score": float(array[row, 3]),
            "iou_score": float(array[row, 4]),
        }
        for rank, row in enumerate(order.tolist())
    ]


def segments_table(rows: pa.Table | Sequence[dict[str, Any]]) -> pa.Table:
    """Check rows against the schema and return them as an Arrow table; bad rows are an InputError."""
    schema = segments_schema()
    if isinstance(rows, pa.Table):
        table = _conform_table(rows, schema)
    else:
        rows = list(rows)
        for number, row in enumerate(rows):
            unknown = sorted(set(row) - set(schema.names))
            missing = [name for name in _REQUIRED if name not in row]
            if unknown or missing:
                raise InputError(f"segment row {number}: missing fields {missing}, unknown fields {unknown}")
        try:
            table = pa.Table.from_pylist(rows, schema=schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as error:
            raise InputError(f"segment rows do not fit the segments schema: {error}") from None
    _check_values(table)
    return table


def _conform_table(table: pa.Table, schema: pa.Schema) -> pa.Table:
    missing = [name for name in _REQUIRED if name not in table.column_names]
    unknown = [name for name in table.column_names if name not in schema.names]
    if missing or unknown:
        raise InputError(f"segment table: missing columns {missing}, unknown columns {unknown}")
    columns = []
    for field in schema:
        if field.name not in table.column_names:
            columns.append(pa.nulls(table.num_rows, field.type))
            continue
        try:
            columns.append(table.column(field.name).cast(field.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
            raise InputError(f"segment table: column '{field.name}' is not {field.type}: {error}") from None
    return pa.Table.from_arrays(columns, schema=schema)


def _check_values(table: pa.Table) -> None:
    if table.num_rows == 0:
        return
    for name in _REQUIRED:
        nulls = table.column(name).null_count
        if nulls:
            raise InputError(f"segment rows: field '{name}' is empty in {nulls} row(s)")
    if pc.any(pc.equal(pc.utf8_trim_whitespace(table.column("query_text")), "")).as_py():
        raise InputError("segment rows: field 'query_text' is empty")
    if pc.any(pc.less(table.column("rank"), 0)).as_py():
        raise InputError("segment rows: field 'rank' is negative")
    start = table.column("start_s").to_numpy()
    end = table.column("end_s").to_numpy()
    if not (np.isfinite(start).all() and np.isfinite(end).all()) or (end < start).any():
        raise InputError("segment rows: fields 'start_s'/'end_s' must be finite with start_s <= end_s")
    vectors = _embedding_matrix(table)
    norms = np.linalg.norm(vectors, axis=1)
    if not np.all(np.abs(norms - 1.0) < 1e-3):
        raise InputError("segment rows: field 'query_embedding' must be L2-normalised (unit length)")
    keys = table.select(list(ROW_KEY)).group_by(list(ROW_KEY)).aggregate([([], "count_all")])
    duplicated = keys.filter(pc.greater(keys.column("count_all"), 1))
    if duplicated.num_rows:
        first = {name: duplicated.column(name)[0].as_py() for name in ROW_KEY}
        raise InputError(f"segment rows: the row key {first} appears more than once in one write")


def _embedding_matrix(table: pa.Table) -> np.ndarray:
    column = table.column("query_embedding").combine_chunks()
    return column.flatten().to_numpy(zero_copy_only=False).reshape(-1, EMBEDDING_DIM)


def _literal(value: str | int) -> str:
    """A SQL literal for a LanceDB filter: strings quoted with ' doubled, ints as they are."""
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return "'" + str(value).replace("'", "''") + "'"


def _in_list(column: str, values: Iterable[str]) -> str:
    return f"{column} IN ({', '.join(_literal(value) for value in values)})"


def _is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


class Index:
    """The segments index at a LanceDB URI (a local folder or an object-store URI such as `s3://bucket/db`;
    `s3://` is configured by the AWS environment variables, see `drn.store.object_store` and docs/cluster.md).

    `overwrite=True` replaces an existing table whose schema differs; otherwise that is an InputError and the
    table is left untouched. Readers see the table version that was current when they opened it (or last
    called `refresh()`), so a job writing at the same time never shows them half a batch.
    """

    def __init__(
        self,
        uri: str | Path,
        table: str = SEGMENTS_TABLE,
        *,
        overwrite: bool = False,
        vector_index_min_rows: int = VECTOR_INDEX_MIN_ROWS,
        storage_options: dict[str, str] | None = None,
    ) -> None:
        self.uri = str(uri)
        self.table_name = table
        self.vector_index_min_rows = vector_index_min_rows
        self._local_path = Path(self.uri.removeprefix("file://")) if _is_local(self.uri) else None
        if self._local_path is not None and self._local_path.exists() and not self._local_path.is_dir():
            raise InputError("the LanceDB location is a file, not a folder", path=self.uri)
        # s3:// URIs get the AWS environment's endpoint, region and timeouts, after a check of the bucket
        self._storage_options = storage_options if storage_options is not None else lancedb_storage_options(self.uri)
        self._db: Any = None
        self._table = self._open_existing()
        if self._table is not None and not _same_schema(self._table.schema, segments_schema()):
            if not overwrite:
                raise InputError(
                    f"table '{table}' exists with another schema ({_schema_difference(self._table.schema)}); "
                    "nothing was changed. Use another table name, or overwrite=True to replace it",
                    path=self.uri,
                )
            self._table = self._create(mode="overwrite")

    # ------------------------------------------------------------------ table handling
    def _connect(self) -> Any:
        if self._db is None:
            try:
                self._db = lancedb.connect(self.uri, storage_options=self._storage_options)
            except OSError as error:
                raise InputError(f"cannot open the LanceDB location: {error}", path=self.uri) from None
        return self._db

    def _open_existing(self) -> Any:
        if self._db is None and self._local_path is not None and not self._local_path.is_dir():
            return None  # nothing there yet: reading creates nothing, the first write creates the folder
        try:
            return self._connect().open_table(self.table_name)
        except (ValueError, FileNotFoundError):
            return None

    def _create(self, mode: str = "create") -> Any:
        self._check_writable()
        try:
            return self._connect().create_table(self.table_name, schema=segments_schema(), mode=mode)
        except OSError as error:
            raise InputError(f"cannot create table '{self.table_name}': {error}", path=self.uri) from None

    def _check_writable(self) -> None:
        if self._local_path is None:
            return
        try:
            self._local_path.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self._local_path):
                pass
        except OSError as error:
            raise InputError(f"the LanceDB location is not writable: {error.strerror or error}",
                             path=self.uri) from None

    def _readable(self) -> Any:
        if self._table is None:
            self._table = self._open_existing()
        if self._table is None:
            raise InputError(f"there is no table '{self.table_name}' yet; run the grounding job first",
                             path=self.uri)
        return self._table

    def _writable(self) -> Any:
        self._check_writable()
        if self._table is None:
            self._table = self._open_existing() or self._create()
        return self._table

    @property
    def table(self) -> Any:
        """The underlying LanceDB table (for advanced use)."""
        return self._readable()

    @property
    def version(self) -> int:
        """The table version this index reads."""
        return self._readable().version

    def refresh(self) -> None:
        """Move to the newest table version (pick up writes made by others since opening)."""
        if self._table is None:
            self._table = self._open_existing()
        else:
            self._table.checkout_latest()

    # ------------------------------------------------------------------ writing
    def write_segments(self, rows: pa.Table | Sequence[dict[str, Any]]) -> int:
        """Merge rows on (run_id, query_id, video_id, rank): existing keys are updated, new ones inserted.

        The merge is one atomic commit: it is all in the table or none of it. Returns the number of rows given.
        """
        data = segments_table(rows)
        if data.num_rows == 0:
            return 0
        table = self._writable()
        (
            table.merge_insert(list(ROW_KEY))
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .execute(data)
        )
        return data.num_rows

    def update_library_ranks(
        self, run_id: str, query_ids: Iterable[str] | None = None, *, queries_per_pass: int = 2000,
        progress: bool = False,
    ) -> int:
        """(Re)compute `library_rank` for a run's queries: each segment's rank by score among all segments of
        its query across the library (ties by video_id, then rank). Returns the number of rows updated."""
        table = self._readable()
        ids = sorted({str(q) for q in query_ids}) if query_ids is not None else self.queries(run_id)[
            "query_id"].to_pylist()
        passes = range(0, len(ids), queries_per_pass)
        if progress:
            from tqdm import tqdm

            passes = tqdm(passes, desc="library ranks", unit="pass")
        updated = 0
        for start in passes:
            chunk = ids[start:start + queries_per_pass]
            where = f"run_id = {_literal(run_id)} AND {_in_list('query_id', chunk)}"
            keys = table.search().where(where).select([*ROW_KEY, "score"]).limit(None).to_pandas()
            if keys.empty:
                continue
            keys = keys.sort_values(["query_id", "score", "video_id", "rank"],
                                    ascending=[True, False, True, True], kind="stable")
            keys["library_rank"] = keys.groupby("query_id", sort=False).cumcount().astype("int32")
            update = pa.Table.from_pandas(keys[[*ROW_KEY, "library_rank"]], preserve_index=False)
            update = update.cast(pa.schema([segments_schema().field(name) for name in update.column_names]))
            table.merge_insert(list(ROW_KEY)).when_matched_update_all().execute(update)
            updated += update.num_rows
        return updated

    def ensure_indices(self, vector_index_min_rows: int | None = None) -> list[str]:
        """Create the indices that are missing and bring existing ones up to date with new rows.

        Scalar indices on video_id, query_id (B-tree), run_id, rank (bitmap) and library_rank (B-tree); a
        native full-text index on query_text; an IVF-PQ cosine index on query_embedding once the table holds
        at least `vector_index_min_rows` rows. Returns the names of the indices created.
        """
        table = self._readable()
        threshold = self.vector_index_min_rows if vector_index_min_rows is None else vector_index_min_rows
        existing = {tuple(config.columns): config for config in table.list_indices()}
        created: list[str] = []
        rows = table.count_rows()
        if rows == 0:
            return created
        for column, kind in _SCALAR_INDICES:
            if (column,) not in existing:
                table.create_index(column, config=kind())
                created.append(f"{column}_idx")
        if ("query_text",) not in existing:
            table.create_index("query_text", config=FTS(with_position=False))
            created.append("query_text_idx")
        if ("query_embedding",) not in existing and rows >= threshold:
            table.create_index("query_embedding", config=IvfPq(distance_type="cosine"))
            created.append("query_embedding_idx")
        stale = [config for config in existing.values() if (config.num_unindexed_rows or 0) > 0]
        if stale:
            table.optimize()
        return created

    # ------------------------------------------------------------------ reading
    def count(self, run_id: str | None = None, video_id: str | None = None) -> int:
        """Rows in the table (0 when there is no table yet), optionally for one run and/or video."""
        if self._table is None and self._open_existing() is None:
            return 0
        where = _filters(run_id=run_id, video_id=video_id)
        return self._readable().count_rows(where)

    def runs(self) -> list[str]:
        """The distinct run ids in the table, sorted."""
        if self.count() == 0:
            return []
        column = self._readable().search().select(["run_id"]).limit(None).to_arrow().column("run_id")
        return sorted(pc.unique(column).to_pylist())

    def queries(self, run_id: str) -> pa.Table:
        """One row per query of a run: query_id, query_text, checkpoint_id, num_segments (sorted by query_id)."""
        columns = ["query_id", "query_text", "checkpoint_id"]
        rows = (self._readable().search().where(f"run_id = {_literal(run_id)}")
                .select(columns).limit(None).to_arrow())
        grouped = rows.group_by(columns).aggregate([([], "count_all")])
        grouped = grouped.rename_columns([*columns, "num_segments"])
        return grouped.sort_by("query_id")

    def to_pandas(
        self, run_id: str | None = None, video_id: str | None = None, query_id: str | None = None,
        *, with_embedding: bool = False, limit: int | None = None,
    ) -> pd.DataFrame:
        """Rows as a DataFrame (without the embedding unless asked), optionally filtered, in table order."""
        columns = [name for name in segments_schema().names if with_embedding or name != "query_embedding"]
        query = self._readable().search().select(columns).limit(limit)
        where = _filters(run_id=run_id, video_id=video_id, query_id=query_id)
        if where:
            query = query.where(where)
        return query.to_pandas()

    def search(
        self, text: str, k: int = 10, video_id: str | None = None, min_score: float | None = None,
        run_id: str | None = None,
    ) -> pa.Table:
        """The best stored segments for a free-text search: the rows of :meth:`answer`."""
        return self.answer(text, k, video_id=video_id, min_score=min_score, run_id=run_id).rows

    def answer(
        self, text: str, k: int = 10, video_id: str | None = None, min_score: float | None = None,
        run_id: str | None = None,
    ) -> SearchAnswer:
        """The best stored segments for a free-text search, with what a user must know about them.

        1. Find the stored queries nearest to `text` in meaning (cosine on the MiniLM query embedding) and in
           words (BM25 full text on query_text, when its index exists), one candidate per (run, query), and
           fuse the two lists by reciprocal rank fusion: relevance = sum over lists of 1 / (60 + position).
        2. Return up to `k` segments of those queries: stored queries that are the searched text first (the same
           words, or a MiniLM cosine >= SAME_QUERY_COSINE), then the others, each group in relevance order, each
           query's segments best score first (its best across the library, or within `video_id`), filtered by
           `min_score` and `run_id`. Columns: RESULT_COLUMNS plus result_rank, matched_query (the stored query
           whose moments a row shows), query_similarity (cosine), query_match ("same", "paraphrase" or "other"),
           query_relevance (the fused score) and calibrated (the run's checkpoint was trained with negative
           pairs, so its scores compare across videos; null when the index does not record it).
        3. Say so when no stored query is the searched text (never another query's moments as the answer
           without that mark), and when a run's scores do not compare across videos (``SearchAnswer.notices``).
        """
        if k < 1:
            raise InputError(f"k must be at least 1, got {k}")
        vector = embed_text(text)
        table = self._readable()
        best_rows = _best_row_filter(video_id=video_id, min_score=min_score, run_id=run_id)
        candidates = max(2 * k, 20)
        found = self._nearest_queries(table, text, vector, best_rows, candidates)
        searched = query_key(text)
        for hit in found.values():
            hit["match"] = match_kind(searched, hit["text"], hit["similarity"])
        nearest = max(found.values(), key=lambda hit: hit["similarity"], default=None)
        answer = SearchAnswer(text, _empty_result(), nearest["text"] if nearest else None,
                              nearest["similarity"] if nearest else None,
                              any(hit["match"] != "other" for hit in found.values()),
                              filtered=any(f is not None for f in (video_id, min_score, run_id)))
        if not found:
            return answer
        chosen = sorted(found.values(), key=lambda hit: (hit["match"] == "other", -hit["relevance"],
                                                         -hit["similarity"]))[:k]
        answer.rows = self._best_segments(table, chosen, k, video_id=video_id, min_score=min_score, run_id=run_id)
        return answer

    def run_records(self) -> dict[str, RunRecord]:
        """What the `runs` table records of each grounding run (empty for indices written before it existed)."""
        return read_runs(self._connect())

    def _nearest_queries(
        self, table: Any, text: str, vector: np.ndarray, where: str, candidates: int
    ) -> dict[tuple[str, str], dict[str, Any]]:
        columns = ["run_id", "query_id", "query_text", "query_embedding"]
        lists = [
            table.search(vector, vector_column_name="query_embedding", query_type="vector")
            .distance_type("cosine").where(where, prefilter=True)
            .select([*columns, "_distance"]).limit(candidates * 2).to_arrow()
        ]
        if self._has_full_text_index(table):
            lists.append(
                table.search(text.strip(), query_type="fts", fts_columns="query_text")
                .where(where, prefilter=True).select([*columns, "_score"]).limit(candidates * 2).to_arrow()
            )
        found: dict[tuple[str, str], dict[str, Any]] = {}
        for hits in lists:
            if hits.num_rows == 0:
                continue
            similarity = _embedding_matrix(hits) @ vector
            seen: set[tuple[str, str]] = set()
            keys = zip(hits.column("run_id").to_pylist(), hits.column("query_id").to_pylist(), strict=True)
            texts = hits.column("query_text").to_pylist()
            for key, sim, stored in zip(keys, similarity.tolist(), texts, strict=True):
                if key in seen:
                    continue
                seen.add(key)
                hit = found.setdefault(key, {"key": key, "relevance": 0.0, "similarity": sim, "text": stored})
                hit["relevance"] += 1.0 / (RRF_K + len(seen))
        return found

    @staticmethod
    def _has_full_text_index(table: Any) -> bool:
        return any(tuple(config.columns) == ("query_text",) for config in table.list_indices())

    def _best_segments(
        self, table: Any, chosen: list[dict[str, Any]], k: int, *, video_id: str | None, min_score: float | None,
        run_id: str | None,
    ) -> pa.Table:
        keys = [hit["key"] for hit in chosen]
        where = [_in_list("run_id", sorted({run for run, _ in keys})),
                 _in_list("query_id", sorted({query for _, query in keys}))]
        if video_id is not None:
            where += [f"video_id = {_literal(video_id)}", f"rank < {int(k)}"]
        else:
            where.append(f"(library_rank < {int(k)} OR library_rank IS NULL)")
        if min_score is not None:
            where.append(f"score >= {float(min_score)!r}")
        rows = table.search().where(" AND ".join(where)).select(list(RESULT_COLUMNS)).limit(None).to_pandas()
        order = {hit["key"]: position for position, hit in enumerate(chosen)}
        rows["_order"] = [order.get(key, -1) for key in zip(rows["run_id"], rows["query_id"], strict=True)]
        rows = rows[rows["_order"] >= 0]
        rows = rows.sort_values(["_order", "score", "video_id", "rank"], ascending=[True, False, True, True],
                                kind="stable").head(k)
        by_key = {hit["key"]: hit for hit in chosen}
        picked = [by_key[key] for key in zip(rows["run_id"], rows["query_id"], strict=True)]
        records = self.run_records()
        result = pa.Table.from_pandas(rows[list(RESULT_COLUMNS)], preserve_index=False)
        result = result.cast(pa.schema([segments_schema().field(name) for name in RESULT_COLUMNS]))
        result = result.add_column(0, "result_rank", pa.array(range(result.num_rows), pa.int32()))
        extra = {
            "matched_query": pa.array([hit["text"] for hit in picked], pa.string()),
            "query_similarity": pa.array([hit["similarity"] for hit in picked], pa.float32()),
            "query_match": pa.array([hit["match"] for hit in picked], pa.string()),
            "query_relevance": pa.array([hit["relevance"] for hit in picked], pa.float32()),
            "calibrated": pa.array([records[run].calibrated if run in records else None for run in rows["run_id"]],
                                   pa.bool_()),
        }
        for name, column in extra.items():
            result = result.append_column(name, column)
        return result


    def search_live(self, text: str, k: int = 10, *, min_score: float | None = None, **options: Any) -> pa.Table:
        """Two-stage live search of a sentence nobody grounded: ANN over the `cells` table of this database, then
        DRN on the candidate videos only (``moments.search.two_stage``). ``options``: ``checkpoint``, ``features``,
        ``cells_table`` and the fields of ``TwoStageOptions`` (``cells``, ``candidates``, ``fusion_weight``...).
        The model and the store are loaded on the first call and kept."""
        from moments.search.two_stage import TwoStageSearcher, TwoStageOptions

        setup = {name: options.pop(name, None) for name in ("checkpoint", "features", "cells_table")}
        searcher = getattr(self, "_live_searcher", None)
        if searcher is None or getattr(self, "_live_setup", None) != setup:
            searcher = TwoStageSearcher(self.uri, setup["checkpoint"], setup["features"],
                                    table=setup["cells_table"] or "cells")
            self._live_searcher, self._live_setup = searcher, setup
        chosen = TwoStageOptions(**{**vars(searcher.options), **options}) if options else None
        return searcher.search(text, k, min_score=min_score, options=chosen)


def _result_schema() -> pa.Schema:
    schema = segments_schema()
    return pa.schema([pa.field("result_rank", pa.int32()), *(schema.field(name) for name in RESULT_COLUMNS),
                      pa.field("matched_query", pa.string()), pa.field("query_similarity", pa.float32()),
                      pa.field("query_match", pa.string()), pa.field("query_relevance", pa.float32()),
                      pa.field("calibrated", pa.bool_())])


def with_match_columns(rows: pa.Table, matched_query: str, similarity: float, match: str,
                       calibrated: bool | None) -> pa.Table:
    """Rows of one query (a live search) with the columns :meth:`Index.answer` adds, so both read alike."""
    count = rows.num_rows
    extra = {
        "matched_query": pa.array([matched_query] * count, pa.string()),
        "query_similarity": pa.array([similarity] * count, pa.float32()),
        "query_match": pa.array([match] * count, pa.string()),
        "query_relevance": pa.array([1.0] * count, pa.float32()),
        "calibrated": pa.array([calibrated] * count, pa.bool_()),
    }
    for name, column in extra.items():
        rows = rows.append_column(name, column)
    return rows


def match_kind(searched_key: str, stored_text: str, similarity: float) -> str:
    """How a stored query relates to the searched text: "same" words (``drn.text.vocabulary.query_key``), a "paraphrase"
    (MiniLM cosine >= SAME_QUERY_COSINE) or an "other" query whose moments answer a different sentence."""
    if query_key(stored_text) == searched_key:
        return "same"
    return "paraphrase" if similarity >= SAME_QUERY_COSINE else "other"


@dataclass
class SearchAnswer:
    """Rows of a search and the facts a user must see beside them (``notices``)."""

    text: str
    rows: pa.Table
    nearest_query: str | None  # the stored query nearest in meaning, whatever the filters kept
    nearest_similarity: float | None
    grounded: bool  # some stored query is the searched text (the same words or a close paraphrase)
    filtered: bool = False  # the search had filters (video, min_score, run): "grounded" holds within them

    def notices(self, live_hint: str = "ground it with --live or add it to the collection") -> list[str]:
        """One line each: the text was never grounded; a run's scores do not compare across videos."""
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
        return lines


def _empty_result() -> pa.Table:
    return _result_schema().empty_table()


def _filters(**equals: str | None) -> str | None:
    parts = [f"{column} = {_literal(value)}" for column, value in equals.items() if value is not None]
    return " AND ".join(parts) or None


def _best_row_filter(*, video_id: str | None, min_score: float | None, run_id: str | None) -> str:
    """Rows that stand for one (run, query): its best segment in the library, or in one video."""
    if video_id is not None:
        parts = [f"video_id = {_literal(video_id)}", "rank = 0"]
    else:
        parts = ["(library_rank = 0 OR (library_rank IS NULL AND rank = 0))"]
    if run_id is not None:
        parts.append(f"run_id = {_literal(run_id)}")
    if min_score is not None:
        if not math.isfinite(min_score):
            raise InputError(f"min_score must be a finite number, got {min_score}")
        parts.append(f"score >= {float(min_score)!r}")
    return " AND ".join(parts)


def _same_schema(found: pa.Schema, expected: pa.Schema) -> bool:
    return [(f.name, f.type) for f in found] == [(f.name, f.type) for f in expected]


def _schema_difference(found: pa.Schema) -> str:
    expected = segments_schema()
    missing = [name for name in expected.names if name not in found.names]
    unexpected = [name for name in found.names if name not in expected.names]
    retyped = [f"{f.name}: {found.field(f.name).type} instead of {f.type}"
               for f in expected if f.name in found.names and found.field(f.name).type != f.type]
    parts = [f"missing {missing}" if missing else "", f"unexpected {unexpected}" if unexpected else "",
             "; ".join(retyped)]
    return "; ".join(part for part in parts if part) or "column order differs"


def default_db_uri() -> str:
    """The LanceDB URI used when none is given: $DRN_DB, else ./lancedb."""
    return os.environ.get("DRN_DB", "lancedb")
