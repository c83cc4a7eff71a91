"""The LanceDB segments index and its queries table: schema, idempotent merges, resumption, search and its errors
(real LanceDB)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from drn.errors import InputError
from drn.text.sentence import EMBEDDING_DIM, embed_texts
from moments.index import (
    ROW_KEY,
    Index,
    queries_schema,
    query_rows,
    segment_rows,
    segments_schema,
    segments_table,
)

REPO = Path(__file__).resolve().parents[1]
QUERIES = {
    "q-fridge": "a person opens the refrigerator",
    "q-onion": "the chef cuts the onion",
    "q-dog": "a dog runs across the yard",
    "q-book": "a man reads a book on the sofa",
}
VIDEOS = ("vid-a", "vid-b", "vid-c")


@pytest.fixture(scope="module")
def query_vectors() -> dict[str, np.ndarray]:
    vectors = embed_texts(list(QUERIES.values()))
    return dict(zip(QUERIES, vectors, strict=True))


def random_unit(rng: np.random.Generator, n: int) -> np.ndarray:
    vectors = rng.standard_normal((n, EMBEDDING_DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def grounded_rows(vectors: dict[str, np.ndarray], run_id: str = "run-1", seed: int = 0, k: int = 3) -> list[dict]:
    """Rows as the grounding job would write them: every query x every video, top-k segments each."""
    rng = np.random.default_rng(seed)
    rows: list[dict] = []
    for query_id, text in QUERIES.items():
        for video_id in VIDEOS:
            starts = rng.uniform(0, 20, k)
            segments = np.column_stack([starts, starts + rng.uniform(1, 5, k), rng.uniform(0, 1, (k, 3))])
            rows += segment_rows(run_id, "ckpt-7", query_id, text, video_id, segments)
    return rows


def grounded_queries(vectors: dict[str, np.ndarray], run_id: str = "run-1"):
    """The queries rows of a run, as the grounding job writes them before its segments."""
    return query_rows(run_id, "ckpt-7", list(QUERIES), list(QUERIES.values()), np.stack(list(vectors.values())))


def sorted_frame(index: Index):
    frame = index.to_pandas(with_embedding=True)
    frame["query_embedding"] = frame["query_embedding"].map(lambda v: tuple(np.round(v, 6)))
    return frame.sort_values(list(ROW_KEY)).reset_index(drop=True)


@pytest.fixture(scope="module")
def searchable(tmp_path_factory, query_vectors) -> Index:
    """Two runs over three videos with library ranks and all indices except the vector one."""
    uri = tmp_path_factory.mktemp("search") / "db"
    index = Index(uri)
    for run, seed in (("run-1", 1), ("run-2", 2)):
        index.write_queries(grounded_queries(query_vectors, run))
        index.write_segments(grounded_rows(query_vectors, run, seed=seed))
    for run in ("run-1", "run-2"):
        index.update_library_ranks(run)
    index.ensure_indices()
    return index


def test_schema_of_a_new_table(tmp_path, query_vectors) -> None:
    schema = segments_schema()
    assert schema.names == ["run_id", "checkpoint_id", "query_id", "query_text", "video_id",
                            "rank", "library_rank", "start_s", "end_s", "score", "match_score", "iou_score"]
    queries = queries_schema()
    assert queries.names == ["run_id", "query_id", "query_text", "query_key", "query_embedding", "checkpoint_id",
                             "top_moments"]
    assert queries.field("query_embedding").type == pa.list_(pa.float32(), 384)
    index = Index(tmp_path / "db")
    assert index.count() == 0
    index.write_queries(grounded_queries(query_vectors))
    index.write_segments(grounded_rows(query_vectors)[:3])
    table = lancedb.connect(str(tmp_path / "db")).open_table("segments")
    assert [(f.name, f.type) for f in table.schema] == [(f.name, f.type) for f in schema]
    stored = lancedb.connect(str(tmp_path / "db")).open_table("queries")
    assert [(f.name, f.type) for f in stored.schema] == [(f.name, f.type) for f in queries]


def test_segment_rows_rank_by_score(query_vectors) -> None:
    segments = np.array([[1.0, 2.0, 0.2, 0.5, 0.4], [3.0, 5.0, 0.9, 0.95, 0.9], [0.0, 1.0, 0.5, 0.6, 0.8]])
    rows = segment_rows("r", "c", 17, "a person opens the refrigerator", "v", segments)
    assert [row["rank"] for row in rows] == [0, 1, 2]
    assert [row["score"] for row in rows] == pytest.approx([0.9, 0.5, 0.2])
    assert [(row["start_s"], row["end_s"]) for row in rows] == [(3.0, 5.0), (0.0, 1.0), (1.0, 2.0)]
    assert rows[0]["query_id"] == "17" and rows[0]["match_score"] == pytest.approx(0.95)
    with pytest.raises(InputError, match="\\[K, 5\\]"):
        segment_rows("r", "c", 1, "text", "v", np.zeros((2, 3)))


def test_writing_the_same_rows_twice_changes_nothing(tmp_path, query_vectors) -> None:
    index = Index(tmp_path / "db")
    rows = grounded_rows(query_vectors)
    index.write_queries(grounded_queries(query_vectors))
    index.write_segments(rows)
    first = sorted_frame(index)
    index.write_queries(grounded_queries(query_vectors))
    index.write_segments(rows)
    index.write_segments(pa.Table.from_pylist(rows, schema=segments_schema()))
    assert index.count() == len(rows) == len(QUERIES) * len(VIDEOS) * 3
    second = sorted_frame(index)
    assert first.equals(second)


def test_a_killed_write_resumed_has_every_key_once(tmp_path) -> None:
    rng = np.random.default_rng(3)
    batches = []
    for number in range(4):
        rows = []
        for query in range(5):
            segments = np.column_stack([np.arange(4.0), np.arange(4.0) + 2, rng.uniform(0, 1, (4, 3))])
            rows += segment_rows("run", "ck", f"b{number}q{query}", f"query {number} {query}", f"video{number % 2}",
                                 segments)
        path = tmp_path / f"batch{number}.parquet"
        pq.write_table(segments_table(rows), path)
        batches.append(path)
    uri = tmp_path / "db"
    job = (
        "import os, signal, sys, pyarrow.parquet as pq\n"
        "from moments.index import Index\n"
        "index = Index(sys.argv[1])\n"
        "for number, path in enumerate(sys.argv[2:]):\n"
        "    index.write_segments(pq.read_table(path))\n"
        "    if number == 1:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    killed = subprocess.run([sys.executable, "-c", job, str(uri), *map(str, batches)], cwd=REPO)
    assert killed.returncode == -9
    index = Index(uri)
    assert index.count() == 2 * 20
    for path in batches:  # resume: the job starts over and re-writes every batch
        index.write_segments(pq.read_table(path))
    frame = index.to_pandas()
    assert len(frame) == 4 * 20
    assert not frame.duplicated(list(ROW_KEY)).any()
    expected = pa.concat_tables(pq.read_table(path) for path in batches).to_pandas()
    assert set(map(tuple, frame[list(ROW_KEY)].values)) == set(map(tuple, expected[list(ROW_KEY)].values))


def test_library_ranks_order_each_query_across_videos(searchable) -> None:
    frame = searchable.to_pandas(run_id="run-1")
    for _, group in frame.groupby("query_id"):
        by_rank = group.sort_values("library_rank")
        assert by_rank["library_rank"].tolist() == list(range(len(group)))
        assert np.all(np.diff(by_rank["score"].to_numpy()) <= 0)


def test_search_returns_the_best_segments_of_the_nearest_query(searchable) -> None:
    results = searchable.search("a person opens the refrigerator", k=4, run_id="run-1")
    frame = searchable.to_pandas(run_id="run-1", query_id="q-fridge")
    expected = frame.sort_values("score", ascending=False).head(4)
    assert results.column("query_id").to_pylist() == ["q-fridge"] * 4
    assert results.column("video_id").to_pylist() == expected["video_id"].tolist()
    assert results.column("start_s").to_pylist() == expected["start_s"].tolist()
    assert results.column("result_rank").to_pylist() == [0, 1, 2, 3]
    assert results.column("query_similarity")[0].as_py() == pytest.approx(1.0, abs=1e-4)


def test_search_filters_by_video_min_score_and_run(searchable) -> None:
    frame = searchable.to_pandas()
    by_video = searchable.search("the chef cuts the onion", k=3, video_id="vid-b")
    assert set(by_video.column("video_id").to_pylist()) == {"vid-b"}
    assert by_video.column("query_id").to_pylist()[0] == "q-onion"
    best = frame[(frame.video_id == "vid-b") & (frame.query_id == "q-onion")].score.max()
    assert by_video.column("score")[0].as_py() == pytest.approx(best)

    by_run = searchable.search("a dog runs across the yard", k=5, run_id="run-2")
    assert set(by_run.column("run_id").to_pylist()) == {"run-2"}

    threshold = 0.5
    results = searchable.search("a dog runs across the yard", k=50, min_score=threshold)
    assert results.num_rows > 0
    assert min(results.column("score").to_pylist()) >= threshold
    dogs = frame[(frame.query_id == "q-dog") & (frame.score >= threshold)]
    assert results.filter(pa.compute.equal(results.column("query_id"), "q-dog")).num_rows == len(dogs)
    assert searchable.search("a dog runs across the yard", k=5, min_score=2.0).num_rows == 0


def test_search_finds_the_nearest_meaning_without_shared_words(searchable) -> None:
    text = "someone unlocks the fridge door"
    words = searchable.queries_table.search(text, query_type="fts", fts_columns="query_text").limit(10).to_arrow()
    assert words.num_rows == 0  # no stored query shares a (non stop-) word with it
    results = searchable.search(text, k=3)
    assert results.num_rows == 3
    assert set(results.column("query_text").to_pylist()) == {"a person opens the refrigerator"}


def test_search_fuses_words_and_meaning(searchable) -> None:
    results = searchable.search("onion", k=1)
    assert results.column("query_id").to_pylist() == ["q-onion"]
    assert results.column("query_relevance")[0].as_py() == pytest.approx(2 / 61)  # first in both lists


def test_empty_query_text_is_an_error(searchable, query_vectors) -> None:
    for text in ("", "   "):
        with pytest.raises(InputError, match="empty"):
            searchable.search(text)
    with pytest.raises(InputError, match="empty"):
        segment_rows("r", "c", 1, " ", "v", np.zeros((1, 5)))
    with pytest.raises(InputError, match="empty"):
        query_rows("r", "c", [1], [" "], query_vectors["q-dog"][None])


def test_bad_rows_are_clear_errors_and_write_nothing(tmp_path, query_vectors) -> None:
    index = Index(tmp_path / "db")
    rows = grounded_rows(query_vectors)[:3]
    index.write_segments(rows)
    missing = [{k: v for k, v in row.items() if k != "score"} for row in rows]
    with pytest.raises(InputError, match="missing fields \\['score'\\]"):
        index.write_segments(missing)
    with pytest.raises(InputError, match="normalised"):
        index.write_queries(query_rows("run-1", "ckpt-7", ["q-fridge"], ["a text"], [[0.5] * EMBEDDING_DIM]))
    with pytest.raises(InputError, match="unknown columns \\['query_embedding'\\]"):
        index.write_segments(pa.Table.from_pylist(rows).append_column(
            "query_embedding", pa.array([query_vectors["q-fridge"].tolist()] * 3)))
    with pytest.raises(InputError, match="more than once"):
        index.write_segments(rows + rows[:1])
    with pytest.raises(InputError, match="start_s <= end_s"):
        index.write_segments([dict(rows[0], start_s=5.0, end_s=1.0)])
    assert index.count() == 3


def test_an_existing_table_with_another_schema_is_an_error_and_untouched(tmp_path) -> None:
    uri = str(tmp_path / "db")
    other = pa.table({"video_id": ["v1", "v2"], "caption": ["x", "y"]})
    lancedb.connect(uri).create_table("segments", other)
    with pytest.raises(InputError, match="another schema") as error:
        Index(uri)
    assert "caption" in str(error.value) and "overwrite" in str(error.value)
    table = lancedb.connect(uri).open_table("segments")
    assert table.schema.names == ["video_id", "caption"] and table.count_rows() == 2
    replaced = Index(uri, overwrite=True)
    assert replaced.count() == 0
    assert lancedb.connect(uri).open_table("segments").schema.names == segments_schema().names


def test_an_unwritable_path_is_a_clear_error(tmp_path, query_vectors) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(InputError, match="a-file"):
        Index(blocker / "db").write_segments(grounded_rows(query_vectors)[:1])
    with pytest.raises(InputError, match="is a file"):
        Index(blocker)
    if os.geteuid() != 0:  # root writes anywhere: the permission case only means something for other users
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(InputError, match="not writable"):
            Index(locked).write_segments(grounded_rows(query_vectors)[:1])


def test_searching_a_missing_table_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(InputError, match="no table 'segments'"):
        Index(tmp_path / "db").search("a person opens the refrigerator")


def test_readers_see_a_consistent_version_while_a_job_writes(tmp_path, query_vectors) -> None:
    uri = tmp_path / "db"
    writer = Index(uri)
    batches = [grounded_rows(query_vectors, f"run-{n}", seed=n) for n in range(6)]
    writer.write_segments(batches[0])
    reader = Index(uri)
    pinned = reader.count()
    seen: list[int] = []
    stop = threading.Event()

    def read_while_writing() -> None:
        while not stop.is_set():
            seen.append(Index(uri).count())

    thread = threading.Thread(target=read_while_writing)
    thread.start()
    for batch in batches[1:]:
        writer.write_segments(batch)
    stop.set()
    thread.join()
    size = len(batches[0])
    assert seen and all(count % size == 0 for count in seen)  # never half a batch
    assert reader.count() == pinned == size
    reader.refresh()
    assert reader.count() == 6 * size


def test_ensure_indices_adds_the_vector_index_past_the_threshold(tmp_path) -> None:
    rng = np.random.default_rng(5)
    rows = []
    ids = [f"q{query}" for query in range(300)]
    texts = [f"synthetic query {query}" for query in range(300)]
    for query_id, text in zip(ids, texts, strict=True):
        segments = np.column_stack([np.zeros(1), np.ones(1), rng.uniform(0, 1, (1, 3))])
        rows += segment_rows("run", "ck", query_id, text, "video", segments)
    index = Index(tmp_path / "db", vector_index_min_rows=1000)
    index.write_queries(query_rows("run", "ck", ids, texts, random_unit(rng, 300)))
    index.write_segments(rows)
    created = index.ensure_indices()
    assert "queries.query_text_idx" in created and "video_id_idx" in created and "query_id_idx" in created
    assert "queries.query_id_idx" in created and "queries.run_id_idx" in created
    assert "queries.query_embedding_idx" not in created
    index.write_segments(rows[:10])
    assert index.ensure_indices() == []
    assert index.ensure_indices(vector_index_min_rows=300) == ["queries.query_embedding_idx"]
    kinds = {tuple(config.columns): config.index_type for config in index.queries_table.list_indices()}
    assert kinds[("query_embedding",)] == "IvfPq" and kinds[("query_text",)] == "FTS"
    segment_indices = {tuple(config.columns) for config in index.table.list_indices()}
    assert ("query_text",) not in segment_indices  # search finds queries in the queries table
    target = index.to_pandas(query_id="q17", with_embedding=True)
    results = index.queries_table.search(np.asarray(target["query_embedding"][0]),
                                         vector_column_name="query_embedding")
    assert results.distance_type("cosine").limit(1).to_arrow().column("query_id").to_pylist() == ["q17"]


def test_runs_queries_and_counts(searchable) -> None:
    assert searchable.runs() == ["run-1", "run-2"]
    queries = searchable.queries("run-1")
    assert queries.column("query_id").to_pylist() == sorted(QUERIES)
    assert queries.column("num_segments").to_pylist() == [len(VIDEOS) * 3] * len(QUERIES)
    assert searchable.count(run_id="run-2", video_id="vid-a") == len(QUERIES) * 3


def test_a_file_uri_passes_through_to_lancedb(tmp_path, query_vectors) -> None:
    index = Index(f"file://{tmp_path / 'db'}")
    index.write_queries(grounded_queries(query_vectors))
    index.write_segments(grounded_rows(query_vectors)[:6])
    assert Index(tmp_path / "db").count() == 6
