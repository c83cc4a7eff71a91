"""The LanceDB `segments` table of grounded moments and its `queries` table: ``Index``, its writes, library
ranks, indices and reads.

Writes merge on the row key (run, query, video, rank), so a batch written twice, or a killed job resumed, leaves
every key exactly once. The rows are those of ``moments.index.segments``; the queries (one row per run and query,
with the embedding) those of ``moments.index.queries``; search over stored queries is ``moments.index.answer``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from lancedb.index import Bitmap, BTree

from drn.errors import InputError
from moments.index.answer import SearchAnswer, answer_search
from moments.index.db import check_db_writable, connect, in_list, local_folder, sql_literal
from moments.index.queries import (
    EMBEDDING_COLUMN,
    MOMENT_FIELDS,
    TOP_MOMENTS,
    TOP_MOMENTS_COLUMN,
    QueriesTable,
    is_legacy_segments,
    migrate_segments,
    moment_type,
    queries_table_name,
)
from moments.index.runs import RunRecord, RunsSnapshot, runs_snapshot
from moments.index.segments import (
    ROW_KEY,
    SEGMENTS_TABLE,
    same_schema,
    schema_difference,
    segments_schema,
    segments_table,
)

VECTOR_INDEX_MIN_ROWS = 100_000
_SCALAR_INDICES = (("video_id", BTree), ("query_id", BTree), ("run_id", Bitmap), ("rank", Bitmap),
                   ("library_rank", BTree))


class Index:
    """The segments index at a LanceDB URI (a local folder or an object-store URI such as `s3://bucket/db`;
    `s3://` is configured by the AWS environment variables, see `drn.store.object_store` and docs/cluster.md),
    with its queries table (`queries` beside `segments`, else `<table>_queries`).

    `overwrite=True` replaces an existing table whose schema differs; otherwise that is an InputError and the
    table is left untouched. A segments table written before the queries table existed (its rows carry
    `query_embedding`) is migrated in place on opening (``moments.index.queries.migrate_segments``). Readers see
    the table version that was current when they opened it (or last called `refresh()`), so a job writing at the
    same time never shows them half a batch.
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
        self._local_path = local_folder(self.uri)
        self._storage_options = storage_options  # None: connect() gives s3:// the AWS environment's settings
        self._db: Any = None
        self._queries = QueriesTable(self._connect, self.uri, queries_table_name(table), overwrite=overwrite)
        self._table = self._open_existing()
        if self._table is not None and is_legacy_segments(self._table.schema):
            migrate_segments(self._table, self._queries)
        if self._table is not None and not same_schema(self._table.schema, segments_schema()):
            if not overwrite:
                difference = schema_difference(self._table.schema, segments_schema())
                raise InputError(
                    f"table '{table}' exists with another schema ({difference}); "
                    "nothing was changed. Use another table name, or overwrite=True to replace it",
                    path=self.uri,
                )
            self._table = self._create(mode="overwrite")
        self._run_records: RunsSnapshot | None = None  # the runs table, read again only when it changes
        self._runs_checked: int | None = None  # the queries table version at that check (None: check again)
        if self._table is not None and self._queries.open() is not None and self._queries.moments_pending:
            self.fill_top_moments()

    # ------------------------------------------------------------------ table handling
    def _connect(self) -> Any:
        if self._db is None:
            self._db = connect(self.uri, self._storage_options)
        return self._db

    def _open_existing(self) -> Any:
        if self._db is None and self._local_path is not None and not self._local_path.is_dir():
            return None  # nothing there yet: reading creates nothing, the first write creates the folder
        db = self._connect()  # a wrong bucket, credentials or endpoint is an InputError here, not "no table"
        try:
            return db.open_table(self.table_name)
        except (ValueError, FileNotFoundError):
            return None

    def _create(self, mode: str = "create") -> Any:
        check_db_writable(self.uri)
        try:
            return self._connect().create_table(self.table_name, schema=segments_schema(), mode=mode)
        except OSError as error:
            raise InputError(f"cannot create table '{self.table_name}': {error}", path=self.uri) from None

    def _readable(self) -> Any:
        if self._table is None:
            self._table = self._open_existing()
        if self._table is None:
            raise InputError(f"there is no table '{self.table_name}' yet; run the grounding job first",
                             path=self.uri)
        return self._table

    def _writable(self) -> Any:
        check_db_writable(self.uri)
        if self._table is None:
            self._table = self._open_existing() or self._create()
        return self._table

    @property
    def table(self) -> Any:
        """The underlying LanceDB table (for advanced use)."""
        return self._readable()

    @property
    def queries_table(self) -> Any:
        """The underlying LanceDB queries table (for advanced use); None while there is none."""
        return self._queries.open()

    @property
    def stored_queries(self) -> QueriesTable:
        """The queries table's reader and writer (``moments.index.queries.QueriesTable``)."""
        return self._queries

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
        self._queries.refresh()
        self._runs_checked = None

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

    def write_queries(self, rows: pa.Table | Sequence[dict[str, Any]]) -> int:
        """Merge queries rows (``moments.index.queries.query_rows``) on (run_id, query_id), one atomic commit;
        a run writes them before its segments. Returns the number of rows given."""
        return self._queries.write(rows)

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
            where = f"run_id = {sql_literal(run_id)} AND {in_list('query_id', chunk)}"
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
        self.update_top_moments(run_id, ids, queries_per_pass=queries_per_pass)
        return updated

    def update_top_moments(self, run_id: str, query_ids: Sequence[str], *, queries_per_pass: int = 2000) -> int:
        """Write each query's TOP_MOMENTS best moments across the library (library_rank order) into its queries
        row, where search reads them: an empty list when it has no segments, null while any of its segments has no
        library rank. The rows are rewritten: :meth:`ensure_indices` indexes them again. Returns the number of
        queries rows written."""
        if not self._queries.has_top_moments():
            return 0
        table = self._readable()
        written = 0
        for start in range(0, len(query_ids), queries_per_pass):
            chunk = sorted({str(query) for query in query_ids[start:start + queries_per_pass]})
            where = (f"run_id = {sql_literal(run_id)} AND {in_list('query_id', chunk)} AND "
                     f"(library_rank < {TOP_MOMENTS} OR library_rank IS NULL)")
            rows = table.search().where(where).select(["query_id", *MOMENT_FIELDS]).limit(None).to_arrow()
            written += self._queries.write_top_moments(_top_moments_rows(run_id, chunk, rows))
        return written

    def fill_top_moments(self) -> None:
        """Write ``top_moments`` of every stored query, run by run, and index the rewritten rows (done on opening
        a queries table that has just gained the column; rows written with their library ranks need it too)."""
        keys = self._queries.read(columns=["run_id", "query_id"])
        runs: dict[str, list[str]] = {}
        for run, query in zip(keys.column("run_id").to_pylist(), keys.column("query_id").to_pylist(), strict=True):
            runs.setdefault(run, []).append(query)
        for run, query_ids in sorted(runs.items()):
            self.update_top_moments(run, query_ids)
        self._queries.ensure_indices(self.vector_index_min_rows)  # the rewritten rows, indexed again
        self._queries.moments_pending = False

    def ensure_indices(self, vector_index_min_rows: int | None = None) -> list[str]:
        """Create the indices that are missing and bring existing ones up to date with new rows.

        Segments: scalar indices on video_id, query_id (B-tree), run_id, rank (bitmap) and library_rank (B-tree).
        Queries (``moments.index.queries.QueriesTable.ensure_indices``): run_id, query_id, query_key, a native
        full-text index on query_text, and an IVF-PQ cosine index on query_embedding once that table holds at
        least `vector_index_min_rows` rows. Returns the names of the indices created (the queries table's as
        ``<table>.<column>_idx``).
        """
        table = self._readable()
        threshold = self.vector_index_min_rows if vector_index_min_rows is None else vector_index_min_rows
        existing = {tuple(config.columns): config for config in table.list_indices()}
        created: list[str] = []
        if table.count_rows() == 0:
            return created
        for column, kind in _SCALAR_INDICES:
            if (column,) not in existing:
                table.create_index(column, config=kind())
                created.append(f"{column}_idx")
        stale = [config for config in existing.values() if (config.num_unindexed_rows or 0) > 0]
        if stale:
            table.optimize()
        return created + self._queries.ensure_indices(threshold)

    # ------------------------------------------------------------------ reading
    def count(self, run_id: str | None = None, video_id: str | None = None) -> int:
        """Rows in the table (0 when there is no table yet), optionally for one run and/or video."""
        if self._table is None and self._open_existing() is None:
            return 0
        where = equal_filter(run_id=run_id, video_id=video_id)
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
        rows = (self._readable().search().where(f"run_id = {sql_literal(run_id)}")
                .select(columns).limit(None).to_arrow())
        grouped = rows.group_by(columns).aggregate([([], "count_all")])
        grouped = grouped.rename_columns([*columns, "num_segments"])
        return grouped.sort_by("query_id")

    def to_pandas(
        self, run_id: str | None = None, video_id: str | None = None, query_id: str | None = None,
        *, with_embedding: bool = False, limit: int | None = None,
    ) -> pd.DataFrame:
        """Rows as a DataFrame, optionally filtered, in table order; ``with_embedding`` adds each row's
        query_embedding (after query_text) from the queries table."""
        query = self._readable().search().select(segments_schema().names).limit(limit)
        where = equal_filter(run_id=run_id, video_id=video_id, query_id=query_id)
        if where:
            query = query.where(where)
        frame = query.to_pandas()
        if not with_embedding:
            return frame
        runs = sorted(frame["run_id"].unique())
        stored = self._queries.read(runs[0] if len(runs) == 1 else None,
                                    ["run_id", "query_id", EMBEDDING_COLUMN]) if runs else None
        vectors = {} if stored is None else dict(zip(
            zip(stored.column("run_id").to_pylist(), stored.column("query_id").to_pylist(), strict=True),
            stored.column(EMBEDDING_COLUMN).to_numpy(zero_copy_only=False), strict=True))
        embeddings = [vectors.get(key) for key in zip(frame["run_id"], frame["query_id"], strict=True)]
        frame.insert(frame.columns.get_loc("query_text") + 1, EMBEDDING_COLUMN, embeddings)
        return frame

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
        """The best stored segments for a free-text search, with what a user must know about them
        (``moments.index.answer.answer_search``: RRF over meaning and words, same-text queries first, notices)."""
        return answer_search(self._readable(), self._queries, self.run_records, text, k, video_id=video_id,
                             min_score=min_score, run_id=run_id)

    def run_records(self) -> dict[str, RunRecord]:
        """What the `runs` table records of each grounding run (empty for indices written before it existed).

        Like the other tables, the index reads the runs as they were when it opened or last ``refresh``-ed; the
        runs table is also looked at again when the queries table has moved (a run written through this index),
        and read again only when its own version moved."""
        seen = self._queries.seen_version
        if self._run_records is None or self._runs_checked is None or self._runs_checked != seen:
            self._run_records = runs_snapshot(self._connect(), self._run_records)
            self._runs_checked = seen
        return self._run_records.records

    def completed_videos(self, run_id: str, query_ids: Sequence[str]) -> set[str]:
        """Videos that already have rows of every query in the run (their rank-0 rows are there)."""
        if self.count(run_id=run_id) == 0:
            return set()
        found = (self._readable().search().where(f"run_id = {sql_literal(run_id)} AND rank = 0")
                 .select(["video_id", "query_id"]).limit(None).to_arrow())
        wanted = set(query_ids)
        seen: dict[str, set[str]] = {}
        for vid, qid in zip(found.column("video_id").to_pylist(), found.column("query_id").to_pylist(),
                            strict=True):
            if qid in wanted:
                seen.setdefault(vid, set()).add(qid)
        return {vid for vid, ids in seen.items() if len(ids) == len(wanted)}

    def delete_run(self, run_id: str) -> None:
        """Remove every row of a run (one commit per table: its segments, then its queries)."""
        if self.count(run_id=run_id):
            self._readable().delete(f"run_id = {sql_literal(run_id)}")
        self._queries.delete_run(run_id)

    def keep_best(self, run_id: str, keep: int) -> int:
        """Keep each query's ``keep`` best segments of a run across the library: delete the rows whose
        ``library_rank`` (see :meth:`update_library_ranks`, called first) is ``keep`` or more. Returns the number
        of rows deleted."""
        if keep < 1:
            raise InputError(f"keep must be at least 1, not {keep}")
        where = f"run_id = {sql_literal(run_id)} AND library_rank >= {int(keep)}"
        if self.count() == 0:
            return 0
        table = self._readable()
        beyond = table.count_rows(where)
        if beyond:
            table.delete(where)
            if keep < TOP_MOMENTS:  # the queries' top moments name rows that are gone
                self.update_top_moments(run_id, self._queries.read(run_id, ["query_id"]).column("query_id")
                                        .to_pylist())
        return beyond

    def run_scores(self, run_id: str) -> pa.Table:
        """The ``query_id`` and ``score`` of every row of a run (what a bounded rerun starts from)."""
        if self.count(run_id=run_id) == 0:
            return pa.table({"query_id": pa.array([], pa.string()), "score": pa.array([], pa.float32())})
        return (self._readable().search().where(f"run_id = {sql_literal(run_id)}").select(["query_id", "score"])
                .limit(None).to_arrow())


def equal_filter(**equals: str | None) -> str | None:
    """``a = 'x' AND b = 'y'`` for the given values that are not None; None when all are."""
    parts = [f"{column} = {sql_literal(value)}" for column, value in equals.items() if value is not None]
    return " AND ".join(parts) or None


def _top_moments_rows(run_id: str, query_ids: Sequence[str], rows: pa.Table) -> pa.Table:
    """The ``top_moments`` of each query from its segment rows with library_rank < TOP_MOMENTS (or none): its
    moments in library_rank order; [] without rows; null when a row has no library rank yet."""
    moments: dict[str, list[dict[str, Any]] | None] = {query: [] for query in query_ids}
    for row in rows.sort_by([("query_id", "ascending"), ("library_rank", "ascending")]).to_pylist():
        query = row.pop("query_id")
        if moments[query] is None:
            continue
        if row["library_rank"] is None:
            moments[query] = None
        else:
            moments[query].append(row)
    return pa.table({
        "run_id": pa.array([run_id] * len(moments), pa.string()),
        "query_id": pa.array(list(moments), pa.string()),
        TOP_MOMENTS_COLUMN: pa.array(list(moments.values()), pa.list_(moment_type())),
    })
