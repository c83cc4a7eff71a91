"""The `queries` table beside `segments`: one row per (run, query), search through it, the notice when a run keeps
fewer moments than asked for, and the migration of an index written before it (real LanceDB)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
import pytest

import moments.index.answer as answer_module
from drn.errors import InputError
from drn.text.sentence import EMBEDDING_DIM, embed_text, embed_texts
from moments.index import Index, RunRecord, queries_schema, query_rows, record_run, segment_rows, segments_schema

REPO = Path(__file__).resolve().parents[1]
QUERIES = {
    "q-fridge": "a person opens the refrigerator",
    "q-onion": "the chef cuts the onion",
    "q-dog": "a dog runs across the yard",
    "q-book": "a man reads a book on the sofa",
}
VIDEOS = ("vid-a", "vid-b", "vid-c")
RUNS = ("run-1", "run-2")
# The segments schema before the queries table (issue 19): every row carried its query's embedding.
LEGACY_SCHEMA = pa.schema([
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
])


@pytest.fixture(scope="module")
def vectors() -> dict[str, np.ndarray]:
    return dict(zip(QUERIES, embed_texts(list(QUERIES.values())), strict=True))


def run_rows(run_id: str, seed: int, per_video: int = 3, videos: tuple[str, ...] = VIDEOS) -> list[dict]:
    """Segment rows of every query in every video, with library ranks (as after `update_library_ranks`)."""
    rng = np.random.default_rng(seed)
    rows = []
    for query_id, text in QUERIES.items():
        mine = []
        for video_id in videos:
            starts = rng.uniform(0, 20, per_video)
            segments = np.column_stack([starts, starts + rng.uniform(1, 5, per_video),
                                        rng.uniform(0, 1, (per_video, 3))])
            mine += segment_rows(run_id, "ckpt-7", query_id, text, video_id, segments)
        mine.sort(key=lambda row: (-np.float32(row["score"]), row["video_id"], row["rank"]))
        rows += [dict(row, library_rank=number) for number, row in enumerate(mine)]
    return rows


def run_queries(vectors: dict[str, np.ndarray], run_id: str) -> pa.Table:
    return query_rows(run_id, "ckpt-7", list(QUERIES), list(QUERIES.values()), np.stack(list(vectors.values())))


def write_run(index: Index, vectors: dict[str, np.ndarray], run_id: str, seed: int, **options) -> list[dict]:
    rows = run_rows(run_id, seed, **options)
    index.write_queries(run_queries(vectors, run_id))
    index.write_segments(rows)
    return rows


def legacy_index(uri: Path, vectors: dict[str, np.ndarray], *, lose: str | None = None) -> pa.Table:
    """An index as written before the queries table: segments carry query_embedding, with the indices that
    `ensure_indices` made then (scalar ones and the full text on query_text); ``lose`` empties one query's
    embedding in every row. Returns the rows."""
    rows = [dict(row, query_embedding=None if row["query_id"] == lose else vectors[row["query_id"]].tolist())
            for seed, run in enumerate(RUNS) for row in run_rows(run, seed)]
    table = pa.Table.from_pylist(rows, schema=LEGACY_SCHEMA)
    segments = lancedb.connect(str(uri)).create_table("segments", table, on_bad_vectors="null")
    segments.create_index("query_id", config=lancedb.index.BTree())
    segments.create_index("query_text", config=lancedb.index.FTS(with_position=False))
    return table


def frame_of(table: pa.Table):
    columns = [name for name in segments_schema().names if name != "query_embedding"]
    return table.select(columns).to_pandas().sort_values(["run_id", "query_id", "video_id", "rank"]).reset_index(
        drop=True)


# ------------------------------------------------------------------------------------------------ rows and writes
def test_query_rows_are_written_once_per_key(tmp_path, vectors) -> None:
    index = Index(tmp_path / "db")
    assert index.write_queries(run_queries(vectors, "run-1")) == len(QUERIES)
    index.write_queries(run_queries(vectors, "run-1"))
    index.write_queries(run_queries(vectors, "run-2"))
    stored = index.queries_table.to_arrow()
    assert stored.num_rows == 2 * len(QUERIES)
    assert [(f.name, f.type) for f in stored.schema] == [(f.name, f.type) for f in queries_schema()]
    renamed = query_rows("run-1", "ckpt-8", ["q-fridge"], ["A person OPENS the refrigerator!"], [vectors["q-fridge"]])
    index.write_queries(renamed)
    stored = index.queries_table.to_arrow().to_pylist()
    assert len(stored) == 2 * len(QUERIES)
    fridge = [row for row in stored if (row["run_id"], row["query_id"]) == ("run-1", "q-fridge")]
    assert len(fridge) == 1 and fridge[0]["checkpoint_id"] == "ckpt-8"
    assert fridge[0]["query_key"] == "a person opens the refrigerator"
    assert np.allclose(fridge[0]["query_embedding"], vectors["q-fridge"], atol=1e-6)
    with pytest.raises(InputError, match="more than once"):
        query_rows("run-1", "c", ["a", "a"], ["one", "two"], np.stack([vectors["q-dog"]] * 2))
    with pytest.raises(InputError, match="do not match"):
        query_rows("run-1", "c", ["a", "b"], ["one", "two"], vectors["q-dog"][None])


def test_segments_carry_no_embedding_and_the_run_is_deleted_from_both_tables(tmp_path, vectors) -> None:
    index = Index(tmp_path / "db")
    for seed, run in enumerate(RUNS):
        write_run(index, vectors, run, seed)
    assert "query_embedding" not in index.table.schema.names
    frame = index.to_pandas(run_id="run-1", with_embedding=True)
    assert list(frame.columns).index("query_embedding") == list(frame.columns).index("query_text") + 1
    for query_id, vector in zip(frame["query_id"], frame["query_embedding"], strict=True):
        assert np.allclose(vector, vectors[query_id], atol=1e-6)
    index.delete_run("run-1")
    assert index.runs() == ["run-2"]
    assert set(index.queries_table.to_arrow().column("run_id").to_pylist()) == {"run-2"}


# ------------------------------------------------------------------------------------------------------- search
def test_search_finds_the_queries_in_the_queries_table(tmp_path, vectors) -> None:
    index = Index(tmp_path / "db")
    with pytest.raises(InputError, match="no table 'segments'"):
        index.search("a dog")
    index.write_segments(run_rows("run-1", 0))
    with pytest.raises(InputError, match="no table 'queries'"):
        index.search("a dog runs across the yard")
    index.write_queries(query_rows("run-1", "ckpt-7", ["q-dog"], [QUERIES["q-dog"]], [vectors["q-dog"]]))
    index.ensure_indices()
    results = index.search("a dog runs across the yard", k=20)
    assert set(results.column("query_id").to_pylist()) == {"q-dog"}  # the others have no queries row
    assert results.num_rows == len(VIDEOS) * 3
    assert results.column("query_similarity")[0].as_py() == pytest.approx(1.0, abs=1e-4)
    # a stored query without segments (a run killed before its first write) is never an answer
    text = "a cat sleeps in the sun"
    index.write_queries(query_rows("run-2", "ckpt-7", ["q-cat"], [text], [embed_text(text)]))
    answer = index.answer(text, k=5)
    assert "q-cat" not in answer.rows.column("query_id").to_pylist()
    assert not answer.grounded and answer.nearest_query == QUERIES["q-dog"]


@pytest.mark.parametrize("passing_keys", [answer_module.MAX_PASSING_KEYS, 0])
def test_filters_that_reject_the_nearest_queries_still_find_the_others(tmp_path, vectors, monkeypatch,
                                                                      passing_keys) -> None:
    """200 stored queries close to the text that have no moment in the video asked for, nor one scoring the
    minimum, and one far away that has both: it is found, whether the queries with moments in the video are
    ranked among themselves or the lists grow until it is."""
    monkeypatch.setattr(answer_module, "MAX_PASSING_KEYS", passing_keys)
    rng = np.random.default_rng(4)
    near = vectors["q-fridge"] + rng.normal(0, 0.05, (200, EMBEDDING_DIM)).astype(np.float32)
    near /= np.linalg.norm(near, axis=1, keepdims=True)
    ids = [f"near{number}" for number in range(200)]
    texts = [f"filler moment number {number}" for number in range(200)]
    index = Index(tmp_path / "db")
    index.write_queries(query_rows("run", "ck", [*ids, "q-onion"], [*texts, QUERIES["q-onion"]],
                                   np.vstack([near, vectors["q-onion"][None]])))
    rows = []
    for query_id, text in zip(ids, texts, strict=True):
        rows += segment_rows("run", "ck", query_id, text, "vid-a", np.array([[0.0, 1.0, 0.3, 0.6, 0.5]]))
    rows += segment_rows("run", "ck", "q-onion", QUERIES["q-onion"], "vid-z", np.array([[2.0, 3.0, 0.9, 0.9, 1.0]]))
    index.write_segments(rows)
    index.update_library_ranks("run")
    index.ensure_indices()
    unfiltered = index.search(QUERIES["q-fridge"], k=3)
    assert set(unfiltered.column("query_id").to_pylist()) <= set(ids)
    in_video = index.answer(QUERIES["q-fridge"], k=3, video_id="vid-z")
    assert in_video.rows.column("query_id").to_pylist() == ["q-onion"]
    assert in_video.nearest_query == QUERIES["q-onion"] and not in_video.grounded
    assert index.search(QUERIES["q-fridge"], k=3, min_score=0.5).column("query_id").to_pylist() == ["q-onion"]
    assert index.search(QUERIES["q-fridge"], k=3, min_score=0.95).num_rows == 0


def test_stored_queries_without_segments_are_passed_over(tmp_path, vectors) -> None:
    """200 stored queries close to the text whose run never wrote a segment: the lists grow past them."""
    rng = np.random.default_rng(5)
    near = vectors["q-fridge"] + rng.normal(0, 0.05, (200, EMBEDDING_DIM)).astype(np.float32)
    near /= np.linalg.norm(near, axis=1, keepdims=True)
    index = Index(tmp_path / "db")
    index.write_queries(query_rows("killed", "ck", [f"near{n}" for n in range(200)],
                                   [f"filler moment number {n}" for n in range(200)], near))
    write_run(index, vectors, "run-1", 0)
    index.ensure_indices()
    results = index.answer(QUERIES["q-fridge"], k=3)
    assert results.grounded and results.rows.column("query_id").to_pylist() == ["q-fridge"] * 3
    assert set(results.rows.column("run_id").to_pylist()) == {"run-1"}


def test_k_beyond_the_runs_keep_per_query_is_said_and_answered(tmp_path, vectors) -> None:
    uri = tmp_path / "db"
    index = Index(uri)
    write_run(index, vectors, "kept", 0, per_video=1, videos=("vid-a", "vid-b"))  # 2 moments per query
    index.ensure_indices()
    record_run(str(uri), RunRecord("kept", "batch", "ckpt-7", "/c.pt", "/features", 2, keep_per_query=2))
    answer = index.answer(QUERIES["q-book"], k=5)
    same = [row for row in answer.rows.to_pylist() if row["query_match"] == "same"]
    assert len(same) == 2 and answer.rows.num_rows == 5  # what is there: its 2, then other queries' moments
    notices = answer.notices()
    assert notices == ["run kept: it keeps only the 2 best moments of each query across the library "
                       "(--keep-per-query 2), fewer than the 5 asked for; showing what is there"]
    assert index.answer(QUERIES["q-book"], k=2).notices() == []
    record_run(str(uri), RunRecord("kept", "batch", "ckpt-7", "/c.pt", "/features", 2, keep_per_query=0))
    assert index.answer(QUERIES["q-book"], k=5).notices() == notices  # the runs as they were at opening
    index.refresh()
    assert index.answer(QUERIES["q-book"], k=5).notices() == []  # 0: the run keeps every moment


# ---------------------------------------------------------------------------------------------------- migration
def test_an_index_in_the_old_schema_opens_migrated_and_again_unchanged(tmp_path, vectors) -> None:
    uri = tmp_path / "db"
    legacy = legacy_index(uri, vectors)
    index = Index(uri)
    segments = lancedb.connect(str(uri)).open_table("segments")
    assert [(f.name, f.type) for f in segments.schema] == [(f.name, f.type) for f in segments_schema()]
    assert frame_of(segments.to_arrow()).equals(frame_of(legacy))  # every row, every value but the embedding
    stored = index.queries_table.to_arrow()
    assert stored.num_rows == len(RUNS) * len(QUERIES)
    for row in stored.to_pylist():
        assert row["query_text"] == QUERIES[row["query_id"]] and row["checkpoint_id"] == "ckpt-7"
        assert np.allclose(row["query_embedding"], vectors[row["query_id"]], atol=1e-6)
    assert {tuple(c.columns) for c in index.queries_table.list_indices()} >= {("query_text",), ("run_id",)}
    assert ("query_text",) not in {tuple(c.columns) for c in segments.list_indices()}
    results = index.search("the chef cuts the onion", k=3, run_id="run-2")
    expected = frame_of(legacy).query("run_id == 'run-2' and query_id == 'q-onion'").nlargest(3, "score")
    assert results.column("start_s").to_pylist() == expected["start_s"].tolist()
    assert results.column("query_match").to_pylist() == ["same"] * 3

    versions = (segments.version, index.queries_table.version)
    again = Index(uri)  # idempotent: nothing left to do, nothing written
    assert (again.table.version, again.queries_table.version) == versions
    assert again.count() == legacy.num_rows and again.queries_table.count_rows() == len(RUNS) * len(QUERIES)


def test_a_migration_killed_midway_loses_nothing_and_the_next_open_finishes_it(tmp_path, vectors) -> None:
    uri = tmp_path / "db"
    legacy = legacy_index(uri, vectors)
    job = (
        "import os, signal, sys\n"
        "import moments.index.queries as queries\n"
        "queries._MIGRATION_CHUNK_ROWS = 3\n"
        "write = queries.QueriesTable.write\n"
        "done = []\n"
        "def killed_after_two(self, rows):\n"
        "    done.append(write(self, rows))\n"
        "    if len(done) == 2:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return done[-1]\n"
        "queries.QueriesTable.write = killed_after_two\n"
        "from moments.index import Index\n"
        "Index(sys.argv[1])\n"
    )
    killed = subprocess.run([sys.executable, "-c", job, str(uri)], cwd=REPO)
    assert killed.returncode == -9
    db = lancedb.connect(str(uri))
    half = db.open_table("queries").count_rows()
    assert 0 < half < len(RUNS) * len(QUERIES)
    assert "query_embedding" in db.open_table("segments").schema.names  # nothing dropped yet
    index = Index(uri)
    assert index.queries_table.count_rows() == len(RUNS) * len(QUERIES)
    assert "query_embedding" not in index.table.schema.names
    assert frame_of(index.table.to_arrow()).equals(frame_of(legacy))
    for row in index.queries_table.to_arrow().to_pylist():
        assert np.allclose(row["query_embedding"], vectors[row["query_id"]], atol=1e-6)


def test_an_old_index_missing_an_embedding_is_refused_in_one_line_and_kept(tmp_path, vectors) -> None:
    uri = tmp_path / "db"
    legacy = legacy_index(uri, vectors, lose="q-dog")
    with pytest.raises(InputError, match="have no embedding") as error:
        Index(uri)
    assert "\n" not in str(error.value) and "jobs.ground" in str(error.value)
    segments = lancedb.connect(str(uri)).open_table("segments")
    assert segments.schema.names == LEGACY_SCHEMA.names and segments.count_rows() == legacy.num_rows
