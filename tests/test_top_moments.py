"""Each query's best moments in its `queries` row (``top_moments``): search answers from them without reading
`segments`, and gives exactly the rows that the read of `segments` gives (real LanceDB)."""

from __future__ import annotations

from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
import pytest

import moments.index.answer as answer_module
from drn.text.sentence import embed_texts
from moments.index import Index
from moments.index.queries import TOP_MOMENTS, TOP_MOMENTS_COLUMN, moment_type
from tests.test_queries_table import QUERIES, run_rows, write_run

SEARCHES = ["a person opens the refrigerator", "someone slices an onion", "the dog is running", "reading a book"]


@pytest.fixture(scope="module")
def vectors() -> dict[str, np.ndarray]:
    return dict(zip(QUERIES, embed_texts(list(QUERIES.values())), strict=True))


def ranked_index(uri: Path, vectors: dict[str, np.ndarray]) -> Index:
    """Two runs of 4 queries x 3 videos x 4 segments, with library ranks and top moments written by the index."""
    index = Index(uri)
    for seed, run in enumerate(("run-1", "run-2")):
        write_run(index, vectors, run, seed, per_video=4)
        index.update_library_ranks(run, list(QUERIES))
    index.ensure_indices()
    return index


def forget_top_moments(index: Index) -> None:
    """Set every query's top_moments to null: search must read `segments` again."""
    keys = index.stored_queries.read(columns=["run_id", "query_id"])
    nulls = pa.nulls(keys.num_rows, pa.list_(moment_type()))
    index.stored_queries.write_top_moments(keys.append_column(TOP_MOMENTS_COLUMN, nulls))


def answers(index: Index) -> list[list[dict]]:
    cases = [{"k": 1}, {"k": 3}, {"k": TOP_MOMENTS}, {"k": 5, "min_score": 0.5}, {"k": 4, "run_id": "run-2"},
             {"k": 10, "min_score": 0.99}]
    return [index.answer(text, **case).rows.to_pylist() for text in SEARCHES for case in cases]


def test_the_top_moments_are_each_querys_best_segments(tmp_path, vectors) -> None:
    index = ranked_index(tmp_path / "db", vectors)
    stored = index.stored_queries.read(columns=["run_id", "query_id", TOP_MOMENTS_COLUMN]).to_pylist()
    assert len(stored) == 2 * len(QUERIES)
    for row in stored:
        expected = sorted((r for r in run_rows(row["run_id"], ("run-1", "run-2").index(row["run_id"]), per_video=4)
                           if r["query_id"] == row["query_id"]), key=lambda r: r["library_rank"])[:TOP_MOMENTS]
        got = row[TOP_MOMENTS_COLUMN]
        assert [m["library_rank"] for m in got] == list(range(TOP_MOMENTS))
        assert [(m["video_id"], m["rank"]) for m in got] == [(r["video_id"], r["rank"]) for r in expected]
        assert [m["score"] for m in got] == pytest.approx([r["score"] for r in expected])


def test_search_from_top_moments_equals_search_from_segments(tmp_path, vectors, monkeypatch) -> None:
    index = ranked_index(tmp_path / "db", vectors)
    reads = []
    real_read = answer_module._rows_of_segments
    monkeypatch.setattr(answer_module, "_rows_of_segments", lambda *a, **kw: reads.append(1) or real_read(*a, **kw))
    fast = answers(index)
    assert reads == []  # every one answered from the queries table alone
    assert sum(len(rows) for rows in fast) > 0 and any(rows[0]["query_match"] == "same" for rows in fast if rows)
    forget_top_moments(index)
    slow = answers(index)
    assert len(reads) > 0
    assert fast == slow
    k_beyond = index.answer(SEARCHES[0], k=TOP_MOMENTS + 1).rows  # more than the rows keep: segments are read
    assert k_beyond.num_rows == TOP_MOMENTS + 1


def test_keeping_fewer_moments_than_the_top_trims_the_top_moments(tmp_path, vectors) -> None:
    index = ranked_index(tmp_path / "db", vectors)
    index.keep_best("run-1", 2)
    stored = index.stored_queries.read("run-1", ["query_id", TOP_MOMENTS_COLUMN]).to_pylist()
    assert [len(row[TOP_MOMENTS_COLUMN]) for row in stored] == [2] * len(QUERIES)
    rows = index.answer(QUERIES["q-dog"], k=TOP_MOMENTS, run_id="run-1").rows.to_pylist()
    assert [row["library_rank"] for row in rows if row["query_id"] == "q-dog"] == [0, 1]


def test_a_queries_table_written_before_top_moments_gains_them_on_opening(tmp_path, vectors) -> None:
    uri = tmp_path / "db"
    expected = answers(ranked_index(uri, vectors))
    lancedb.connect(uri).open_table("queries").drop_columns([TOP_MOMENTS_COLUMN])  # the issue-19 schema
    reopened = Index(uri)
    stored = reopened.stored_queries.read(columns=[TOP_MOMENTS_COLUMN]).column(TOP_MOMENTS_COLUMN)
    assert stored.null_count == 0 and all(len(moments) == TOP_MOMENTS for moments in stored.to_pylist())
    assert answers(reopened) == expected
    assert answers(Index(uri)) == expected  # opened again: nothing left to do


def test_a_query_without_segments_has_no_top_moments_and_is_passed_over(tmp_path, vectors) -> None:
    index = ranked_index(tmp_path / "db", vectors)
    index.table.delete("run_id = 'run-2' AND query_id = 'q-onion'")
    index.update_library_ranks("run-2", list(QUERIES))
    stored = {row["query_id"]: row[TOP_MOMENTS_COLUMN]
              for row in index.stored_queries.read("run-2", ["query_id", TOP_MOMENTS_COLUMN]).to_pylist()}
    assert stored["q-onion"] == [] and len(stored["q-dog"]) == TOP_MOMENTS
    rows = index.answer(QUERIES["q-onion"], k=3, run_id="run-2").rows.to_pylist()
    assert rows and all(row["query_id"] != "q-onion" for row in rows)
