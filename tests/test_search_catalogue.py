"""Search reads its ranked lists as keys and row ids, and the hits' details from the queries' catalogue (or one
take by row id above its size): every path gives the same rows, a write is seen, and searches running at once give
what they give one at a time (real LanceDB)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pytest

import moments.index.answer as answer_module
import moments.index.queries as queries_module
from drn.text.sentence import embed_text, embed_texts
from moments.index import Index
from moments.index.catalogue import QueryCatalogue
from tests.test_queries_table import QUERIES, write_run
from tests.test_top_moments import SEARCHES, answers, ranked_index


@pytest.fixture(scope="module")
def vectors() -> dict[str, np.ndarray]:
    return dict(zip(QUERIES, embed_texts(list(QUERIES.values())), strict=True))


def test_catalogue_take_and_whole_lists_give_the_same_rows(tmp_path, vectors, monkeypatch) -> None:
    index = ranked_index(tmp_path / "db", vectors)
    view = index.stored_queries.search_view()
    assert view is not None and view.catalogue is not None and view.catalogue.rows.num_rows == 2 * len(QUERIES)
    assert view.catalogue.unit_vectors is not None  # a small table: the vector list is exact, in memory
    from_catalogue = answers(index)
    assert sum(len(rows) for rows in from_catalogue) > 0

    lancedb_list = Index(tmp_path / "db")
    lancedb_list.stored_queries.exact_list_max_rows = 0  # the vector list from LanceDB
    assert lancedb_list.stored_queries.search_view().catalogue.unit_vectors is None
    assert answers(lancedb_list) == from_catalogue

    monkeypatch.setattr(queries_module, "CATALOGUE_MAX_ROWS", 0)  # too many rows: one take by row id
    taken = Index(tmp_path / "db")
    assert taken.stored_queries.search_view().catalogue is None
    assert answers(taken) == from_catalogue

    monkeypatch.setattr(answer_module, "_with_columns", lambda *args: None)  # row ids gone: whole lists again
    assert answers(Index(tmp_path / "db")) == from_catalogue


def test_a_search_after_a_write_reads_the_new_version(tmp_path, vectors) -> None:
    index = ranked_index(tmp_path / "db", vectors)
    before = index.answer(QUERIES["q-book"], k=10, run_id="run-3")
    assert before.rows.num_rows == 0
    write_run(index, vectors, "run-3", 3)
    index.update_library_ranks("run-3", list(QUERIES))
    after = index.answer(QUERIES["q-book"], k=10, run_id="run-3")
    assert after.rows.num_rows == 10 and set(after.rows.column("run_id").to_pylist()) == {"run-3"}
    assert index.stored_queries.search_view().catalogue.rows.num_rows == 3 * len(QUERIES)


def test_the_catalogue_finds_rows_by_row_id_in_the_order_asked() -> None:
    rows = pa.table({"query_id": ["a", "b", "c"]})
    catalogue = QueryCatalogue(7, np.array([3, 10, 42], dtype=np.int64), rows)
    assert catalogue.take([42, 3, 42]).column("query_id").to_pylist() == ["c", "a", "c"]
    assert catalogue.take([]).num_rows == 0
    assert catalogue.take([3, 11]) is None  # a row id of another version
    assert catalogue.take([99]) is None
    assert QueryCatalogue(7, np.array([], dtype=np.int64), rows.slice(0, 0)).take([1]) is None


def test_searches_at_once_give_the_rows_of_searches_one_at_a_time(tmp_path, vectors) -> None:
    index = ranked_index(tmp_path / "db", vectors)
    cases = [(text, k, score) for text in [*SEARCHES, *QUERIES.values()] for k in (1, 5, 10) for score in (None, 0.5)]
    serial = [index.answer(text, k=k, min_score=score).rows.to_pylist() for text, k, score in cases]
    with ThreadPoolExecutor(max_workers=8) as pool:
        at_once = list(pool.map(lambda case: index.answer(case[0], k=case[1], min_score=case[2]).rows.to_pylist(),
                                cases * 3))
    assert sum(len(rows) for rows in serial) > 0
    assert at_once == serial * 3


def test_the_exact_list_in_memory_ranks_as_lancedb_does(tmp_path, vectors) -> None:
    index = ranked_index(tmp_path / "db", vectors)
    view = index.stored_queries.search_view()
    keys = ["run_id", "query_id"]

    def ranked(hits: pa.Table) -> list[tuple[float, str, str]]:  # equal cosines (the runs share texts) in key order
        rows = view.catalogue.take(hits.column("_rowid").to_pylist())
        cosine = answer_module.embedding_matrix(rows) @ vector
        return sorted((-round(float(c), 5), run, query) for c, run, query in zip(
            cosine, hits.column("run_id").to_pylist(), hits.column("query_id").to_pylist(), strict=True))

    for text in [*SEARCHES, "a person opens a window"]:
        vector = embed_text(text)
        for run_id, limit in ((None, 100), ("run-2", 100), (None, 3), ("run-1", 1), ("no-such-run", 5)):
            where = None if run_id is None else f"run_id = '{run_id}'"
            exact = view.catalogue.nearest(vector, limit, keys, run_id)
            lancedb = answer_module._vector_hits(view.table, vector, where, limit, keys, row_ids=True)
            assert exact.column_names == [*keys, "_rowid"]
            assert exact.num_rows == lancedb.num_rows == (0 if run_id == "no-such-run" else
                                                          min(limit, (1 if run_id else 2) * len(QUERIES)))
            if limit >= 2 * len(QUERIES):
                assert ranked(exact) == ranked(lancedb)
            else:  # cut inside a tie: the same cosines, nearest first
                assert [c for c, *_ in ranked(exact)] == [c for c, *_ in ranked(lancedb)]
            exact_cosines = answer_module.embedding_matrix(view.catalogue.take(exact.column("_rowid").to_pylist())
                                                           ) @ vector
            assert np.all(np.diff(exact_cosines) <= 1e-6)
