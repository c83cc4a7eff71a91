"""The LanceDB `queries` table beside `segments` (DESIGN.md section 7): one row per (run, query).

Each row holds the query's text, its normalised key (``drn.text.query_key``), its 384-d unit MiniLM embedding and
the checkpoint id, and ``top_moments``: the query's TOP_MOMENTS best moments across the library (library_rank
order), written with the library ranks (``Index.update_library_ranks``). Search finds the stored queries here
(cosine on the embedding, BM25 on the text) and, for up to TOP_MOMENTS results without a video filter, answers
from their ``top_moments`` alone; otherwise it reads their segments from `segments` through the scalar indices on
run_id and query_id. Either way its cost follows the number of queries, never the number of segment rows. Writes
merge on (run_id, query_id).

``top_moments`` is null where it is not known (a run being written, or a table written before the column
existed): search then reads `segments` for that query. A queries table without the column gains it on opening
where the index is writable (``add_top_moments_column``; the index fills it).

An index written before this table existed (segment rows that carry ``query_embedding``) is migrated in place
(``migrate_segments``): the queries table is written in full first, and only then is the column dropped, so a
migration killed midway loses nothing and the next open finishes it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from lancedb.index import FTS, Bitmap, BTree, IvfPq

from drn.errors import InputError
from drn.text import query_key
from drn.text.sentence import EMBEDDING_DIM
from moments.index.catalogue import CATALOGUE_MAX_ROWS, EXACT_LIST_MAX_ROWS, QueryCatalogue
from moments.index.db import check_db_writable, in_list, sql_literal
from moments.index.segments import (
    SEGMENTS_TABLE,
    check_filled,
    check_unique,
    conform_rows,
    same_schema,
    schema_difference,
    segments_schema,
)

QUERIES_TABLE = "queries"
QUERY_ROW_KEY = ("run_id", "query_id")
EMBEDDING_COLUMN = "query_embedding"
_REQUIRED = ("run_id", "query_id", "query_text", "query_embedding", "checkpoint_id")
_SCALAR_INDICES = (("run_id", Bitmap), ("query_id", BTree), ("query_key", BTree))
_MIGRATION_CHUNK_ROWS = 20_000
TOP_MOMENTS_COLUMN = "top_moments"
# Moments kept per query in the queries table: a search for up to this many results needs no read of `segments`.
TOP_MOMENTS = 10
# What search reads of each stored query it finds (``moments.index.answer``; the catalogue holds these too).
HIT_COLUMNS = ("run_id", "query_id", "query_text", "checkpoint_id", EMBEDDING_COLUMN)
MOMENT_FIELDS = ("video_id", "rank", "library_rank", "start_s", "end_s", "score", "match_score", "iou_score")


def moment_type() -> pa.DataType:
    """One moment of ``top_moments``: the segment fields that a query's row does not hold already."""
    segments = segments_schema()
    return pa.struct([segments.field(name) for name in MOMENT_FIELDS])


def queries_schema() -> pa.Schema:
    """The Arrow schema of the `queries` table."""
    return pa.schema([
        pa.field("run_id", pa.string()),
        pa.field("query_id", pa.string()),
        pa.field("query_text", pa.string()),
        pa.field("query_key", pa.string()),
        pa.field(EMBEDDING_COLUMN, pa.list_(pa.float32(), EMBEDDING_DIM)),
        pa.field("checkpoint_id", pa.string()),
        pa.field(TOP_MOMENTS_COLUMN, pa.list_(moment_type())),
    ])


def without_top_moments(schema: pa.Schema) -> pa.Schema:
    """The queries schema as it was before ``top_moments`` (tables written then open, read the old way)."""
    return pa.schema([field for field in schema if field.name != TOP_MOMENTS_COLUMN])


def queries_table_name(segments_table: str = SEGMENTS_TABLE) -> str:
    """The queries table that goes with a segments table: `queries` beside `segments`, else `<name>_queries`."""
    return QUERIES_TABLE if segments_table == SEGMENTS_TABLE else f"{segments_table}_queries"


def query_rows(
    run_id: str, checkpoint_id: str, query_ids: Sequence[str | int], texts: Sequence[str],
    embeddings: np.ndarray | Sequence[Sequence[float]],
) -> pa.Table:
    """The `queries` rows of one run: ids, texts and their [Q, 384] unit embeddings, checked (an InputError)."""
    ids = [str(query_id) for query_id in query_ids]
    vectors = np.asarray(embeddings, dtype=np.float32)
    if len(texts) != len(ids) or vectors.ndim != 2 or vectors.shape != (len(ids), EMBEDDING_DIM):
        raise InputError(f"queries: {len(ids)} ids, {len(texts)} texts and embeddings of shape {vectors.shape} "
                         f"do not match (expected [{len(ids)}, {EMBEDDING_DIM}])")
    table = pa.table({
        "run_id": pa.array([str(run_id)] * len(ids), pa.string()),
        "query_id": pa.array(ids, pa.string()),
        "query_text": pa.array(list(texts), pa.string()),
        "query_key": pa.nulls(len(ids), pa.string()),
        EMBEDDING_COLUMN: pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), EMBEDDING_DIM),
        "checkpoint_id": pa.array([str(checkpoint_id)] * len(ids), pa.string()),
    })
    return queries_table(table)


def queries_table(rows: pa.Table | Sequence[dict[str, Any]]) -> pa.Table:
    """Check rows against the schema and return them as an Arrow table, `query_key` computed from the text."""
    schema = queries_schema()
    table = conform_rows(rows, schema, _REQUIRED, "query")
    _check_values(table)
    keys = pa.array([query_key(text) for text in table.column("query_text").to_pylist()], pa.string())
    return table.set_column(schema.get_field_index("query_key"), schema.field("query_key"), keys)


def _check_values(table: pa.Table) -> None:
    if table.num_rows == 0:
        return
    check_filled(table, _REQUIRED, "query rows")
    norms = np.linalg.norm(embedding_matrix(table), axis=1)
    if not np.all(np.abs(norms - 1.0) < 1e-3):
        raise InputError(f"query rows: field '{EMBEDDING_COLUMN}' must be L2-normalised (unit length)")
    check_unique(table, QUERY_ROW_KEY, "query rows")


def embedding_matrix(table: pa.Table) -> np.ndarray:
    """The `query_embedding` column as a [rows, 384] float32 matrix."""
    column = table.column(EMBEDDING_COLUMN).combine_chunks()
    return column.flatten().to_numpy(zero_copy_only=False).reshape(-1, EMBEDDING_DIM)


@dataclass(frozen=True)
class SearchView:
    """What a search needs to know of the queries table at its checked-out version (``QueriesTable.search_view``):
    the LanceDB table, whether it has ``top_moments`` and a full-text index, and the catalogue of its rows' details
    (None above CATALOGUE_MAX_ROWS rows)."""

    table: Any
    has_top_moments: bool
    full_text_indexed: bool
    catalogue: QueryCatalogue | None


class QueriesTable:
    """The `queries` table of an index: opened when it exists, created by the first write.

    ``connect`` gives the index's LanceDB connection. An existing table with another schema is an InputError
    (nothing changed) unless ``overwrite``, which replaces it.
    """

    def __init__(self, connect: Callable[[], Any], uri: str, name: str = QUERIES_TABLE, *,
                 overwrite: bool = False) -> None:
        self._connect = connect
        self.uri = uri
        self.name = name
        self.overwrite = overwrite
        self._table: Any = None
        self._known: tuple[int, tuple[bool, bool]] | None = None  # (table version, what ``_facts`` found)
        self._catalogue: QueryCatalogue | int | None = None  # the catalogue, or the version too large for one
        self._catalogue_lock = threading.Lock()
        self.exact_list_max_rows = EXACT_LIST_MAX_ROWS  # up to this many rows the vector list is exact, in memory
        self.seen_version: int | None = None  # the version the last search_view found
        self.moments_pending = False  # the column was just added: the index must fill it (Index does on opening)

    def open(self) -> Any:
        """The LanceDB table, or None while there is none."""
        if self._table is None:
            try:
                table = self._connect().open_table(self.name)
            except (ValueError, FileNotFoundError):
                return None
            if same_schema(table.schema, without_top_moments(queries_schema())):
                table = self._add_top_moments_column(table)
            elif not same_schema(table.schema, queries_schema()):
                if not self.overwrite:
                    raise InputError(f"table '{self.name}' exists with another schema "
                                     f"({schema_difference(table.schema, queries_schema())}); nothing was changed. "
                                     "Use another table name, or overwrite=True to replace it", path=self.uri)
                table = self._create(mode="overwrite")
            self._table = table
        return self._table

    def _add_top_moments_column(self, table: Any) -> Any:
        """Give a table written before ``top_moments`` the column (empty), where the index is writable; elsewhere
        it is read as it is and search reads `segments` for every query."""
        try:
            check_db_writable(self.uri)
            table.add_columns(pa.schema([queries_schema().field(TOP_MOMENTS_COLUMN)]))
        except (InputError, OSError, RuntimeError, ValueError):
            table.checkout_latest()  # read-only here, or another process added it at the same time
        if TOP_MOMENTS_COLUMN in table.schema.names:
            self.moments_pending = True
        return table

    def has_top_moments(self) -> bool:
        """The table has the ``top_moments`` column (False while there is no table)."""
        return self._facts()[0]

    def full_text_indexed(self) -> bool:
        """query_text has a full-text index."""
        return self._facts()[1]

    def search_view(self) -> SearchView | None:
        """The table as a search reads it (None while there is none): one look at its version, then what is known
        of that version (its facts, its catalogue) or read once for it."""
        table = self.open()
        if table is None:
            return None
        version = self.seen_version = table.version
        has_top_moments, full_text_indexed = self._facts(version)
        return SearchView(table, has_top_moments, full_text_indexed,
                          self._catalogue_of(table, version, has_top_moments))

    def _catalogue_of(self, table: Any, version: int, has_top_moments: bool) -> QueryCatalogue | None:
        """The catalogue of this version (``moments.index.catalogue``), read once; None above CATALOGUE_MAX_ROWS."""
        with self._catalogue_lock:
            known = self._catalogue
            if isinstance(known, QueryCatalogue) and known.version == version:
                return known
            if known == version:
                return None
            if table.count_rows() > CATALOGUE_MAX_ROWS:
                self._catalogue = version
                return None
            columns = [*HIT_COLUMNS, TOP_MOMENTS_COLUMN] if has_top_moments else list(HIT_COLUMNS)
            self._catalogue = QueryCatalogue.read(table, columns, EMBEDDING_COLUMN, self.exact_list_max_rows)
            return self._catalogue

    def _facts(self, version: int | None = None) -> tuple[bool, bool]:
        """(has top_moments, has a full-text index on query_text), looked up once per table version."""
        table = self.open()
        if table is None:
            return False, False
        version = table.version if version is None else version
        if self._known is None or self._known[0] != version:
            indexed = any(tuple(config.columns) == ("query_text",) for config in table.list_indices())
            self._known = (version, (TOP_MOMENTS_COLUMN in table.schema.names, indexed))
        return self._known[1]

    def write_top_moments(self, moments: pa.Table) -> int:
        """Set ``top_moments`` of existing rows from a table of run_id, query_id and top_moments (one commit);
        keys without a row are ignored. Returns the number of rows given."""
        table = self.open()
        if moments.num_rows == 0 or table is None or TOP_MOMENTS_COLUMN not in table.schema.names:
            return 0
        check_db_writable(self.uri)
        table.merge_insert(list(QUERY_ROW_KEY)).when_matched_update_all().execute(moments)
        return moments.num_rows

    def _create(self, mode: str = "create") -> Any:
        check_db_writable(self.uri)
        try:
            return self._connect().create_table(self.name, schema=queries_schema(), mode=mode, exist_ok=True)
        except OSError as error:
            raise InputError(f"cannot create table '{self.name}': {error}", path=self.uri) from None

    def refresh(self) -> None:
        """Move to the newest table version (or open the table that appeared since)."""
        if self._table is None:
            self.open()
        else:
            self._table.checkout_latest()

    def write(self, rows: pa.Table | Sequence[dict[str, Any]]) -> int:
        """Merge rows on (run_id, query_id) in one atomic commit; returns the number of rows given."""
        data = queries_table(rows)
        if data.num_rows == 0:
            return 0
        check_db_writable(self.uri)
        table = self.open()
        if table is None:
            table = self._table = self._create()
        (table.merge_insert(list(QUERY_ROW_KEY)).when_matched_update_all().when_not_matched_insert_all()
         .execute(data))
        return data.num_rows

    def read(self, run_id: str | None = None, columns: Sequence[str] | None = None) -> pa.Table:
        """Rows (all columns unless ``columns``), optionally of one run; empty while there is no table."""
        table = self.open()
        names = list(columns or [name for name in queries_schema().names
                                 if table is None or name in table.schema.names])
        if table is None:
            return pa.schema([queries_schema().field(name) for name in names]).empty_table()
        query = table.search().select(names).limit(None)
        if run_id is not None:
            query = query.where(f"run_id = {sql_literal(run_id)}")
        return query.to_arrow()

    def count(self) -> int:
        """Rows in the table (0 while there is none)."""
        table = self.open()
        return 0 if table is None else table.count_rows()

    def delete_run(self, run_id: str) -> None:
        """Remove every row of a run (one commit)."""
        table = self.open()
        if table is not None and table.count_rows(f"run_id = {sql_literal(run_id)}"):
            table.delete(f"run_id = {sql_literal(run_id)}")

    def ensure_indices(self, vector_index_min_rows: int) -> list[str]:
        """Missing indices, created: bitmap on run_id, B-tree on query_id and query_key, full text on query_text,
        IVF-PQ cosine on query_embedding once the table has ``vector_index_min_rows`` rows; stale ones are brought
        up to date. Returns the names created, as ``<table>.<column>_idx``."""
        table = self.open()
        if table is None or table.count_rows() == 0:
            return []
        existing = {tuple(config.columns): config for config in table.list_indices()}
        created: list[str] = []
        for column, kind in _SCALAR_INDICES:
            if (column,) not in existing:
                table.create_index(column, config=kind())
                created.append(column)
        if ("query_text",) not in existing:
            table.create_index("query_text", config=FTS(with_position=False))
            created.append("query_text")
        if (EMBEDDING_COLUMN,) not in existing and table.count_rows() >= vector_index_min_rows:
            table.create_index(EMBEDDING_COLUMN, config=IvfPq(distance_type="cosine"))
            created.append(EMBEDDING_COLUMN)
        if any((config.num_unindexed_rows or 0) > 0 for config in existing.values()):
            table.optimize()
        return [f"{self.name}.{column}_idx" for column in created]


# ---------------------------------------------------------------------------------------------------- migration
def is_legacy_segments(schema: pa.Schema) -> bool:
    """The segments schema of an index written before the queries table: each row carries `query_embedding`."""
    fields = list(segments_schema())
    at = [field.name for field in fields].index("query_text") + 1
    legacy = pa.schema([*fields[:at], pa.field(EMBEDDING_COLUMN, pa.list_(pa.float32(), EMBEDDING_DIM)),
                        *fields[at:]])
    return same_schema(schema, legacy)


def migrate_segments(segments: Any, queries: QueriesTable) -> int:
    """Move a legacy segments table's query embeddings into ``queries`` and drop the column; idempotent.

    1. Each (run, query)'s text, checkpoint and embedding, read from its rank-0 rows (and, for a key without
       one, from any of its rows), merged into the queries table in chunks.
    2. Only when every (run, query) of the segments has its queries row: `query_embedding` is dropped from
       segments (one commit), with the full-text index on the segments' query_text that search no longer uses.

    A migration killed at any point leaves the rows and their embeddings; the next open starts over and merges
    the same rows again. Returns the number of queries rows written.
    """
    try:
        check_db_writable(queries.uri)
    except InputError:
        raise InputError(f"table '{_table_name(segments)}' was written before the queries table (its rows carry "
                         f"{EMBEDDING_COLUMN}) and cannot be migrated here: open it once where it is writable, "
                         "or rebuild it by grounding the runs again (python -m jobs.ground) into a new --db",
                         path=queries.uri) from None
    columns = ["run_id", "query_id", "query_text", "checkpoint_id", EMBEDDING_COLUMN]
    written: set[tuple[str, str]] = set()
    moved = _move_embeddings(segments.search().where("rank = 0").select(columns).limit(None), queries, written)
    everywhere = _distinct_keys(segments)
    missing = sorted(everywhere - written)
    for first in range(0, len(missing), 1000):  # keys without a rank-0 row: read any of their rows
        chunk = missing[first:first + 1000]
        where = (f"{in_list('run_id', sorted({run for run, _ in chunk}))} AND "
                 f"{in_list('query_id', sorted({query for _, query in chunk}))}")
        moved += _move_embeddings(segments.search().where(where).select(columns).limit(None), queries, written)
    lost = everywhere - written
    if lost:
        run, query = sorted(lost)[0]
        raise InputError(f"table '{_table_name(segments)}': {len(lost)} (run, query) pairs have no embedding "
                         f"(e.g. run {run!r}, query {query!r}); nothing was dropped. Rebuild the index by grounding "
                         "the runs again (python -m jobs.ground) into a new --db", path=queries.uri)
    if queries.count():
        queries.ensure_indices(vector_index_min_rows=1 << 62)  # search fuses words again; the vector index later
    _drop_legacy_column(segments)
    return moved


def _move_embeddings(query: Any, queries: QueriesTable, written: set[tuple[str, str]]) -> int:
    """Merge the first row of each (run, query) not yet written from a query's batches into ``queries``."""
    moved = 0
    pending: list[pa.Table] = []
    rows = 0
    for batch in query.to_batches(_MIGRATION_CHUNK_ROWS):
        batch = pa.Table.from_batches([batch])
        batch = batch.filter(pc.is_valid(batch.column(EMBEDDING_COLUMN)))
        keep = []
        for position, key in enumerate(zip(batch.column("run_id").to_pylist(), batch.column("query_id").to_pylist(),
                                           strict=True)):
            if key not in written:
                written.add(key)
                keep.append(position)
        if keep:
            pending.append(batch.take(pa.array(keep, pa.int64())))
            rows += len(keep)
        if rows >= _MIGRATION_CHUNK_ROWS:
            moved += queries.write(pa.concat_tables(pending))
            pending, rows = [], 0
    if pending:
        moved += queries.write(pa.concat_tables(pending))
    return moved


def _distinct_keys(segments: Any) -> set[tuple[str, str]]:
    keys: set[tuple[str, str]] = set()
    for batch in segments.search().select(list(QUERY_ROW_KEY)).limit(None).to_batches(200_000):
        keys.update(zip(batch.column("run_id").to_pylist(), batch.column("query_id").to_pylist(), strict=True))
    return keys


def _drop_legacy_column(segments: Any) -> None:
    """Drop `query_embedding` (and the full-text index on query_text) from segments; a no-op once done."""
    try:
        for config in segments.list_indices():
            if tuple(config.columns) == ("query_text",):
                segments.drop_index(config.name)
        if EMBEDDING_COLUMN in segments.schema.names:
            segments.drop_columns([EMBEDDING_COLUMN])
    except (OSError, RuntimeError, ValueError):  # another process migrated at the same time
        segments.checkout_latest()
        if EMBEDDING_COLUMN in segments.schema.names:
            raise


def _table_name(table: Any) -> str:
    return str(getattr(table, "name", SEGMENTS_TABLE))
