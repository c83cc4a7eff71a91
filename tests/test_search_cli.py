"""`python -m jobs.search`: the readable table, JSON, filters and the one-line errors (real LanceDB)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from drn.text.sentence import embed_texts
from jobs.search import build_parser, main
from moments.index import Index, query_rows, segment_rows
from moments.index.runs import RunRecord, record_run

REPO = Path(__file__).resolve().parents[1]
TEXTS = {"q0": "a person opens the refrigerator", "q1": "the chef cuts the onion"}


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> str:
    uri = str(tmp_path_factory.mktemp("cli") / "db")
    index = Index(uri)
    index.write_queries(query_rows("run-a", "ckpt", list(TEXTS), list(TEXTS.values()),
                                   embed_texts(list(TEXTS.values()))))
    for query_id, text in TEXTS.items():
        for number, video_id in enumerate(["kitchen-1", "kitchen-2"]):
            segments = np.array([[1.0 + number, 4.5 + number, 0.9 - 0.3 * number, 0.95, 0.9],
                                 [10.0, 12.25, 0.4 - 0.3 * number, 0.5, 0.8]])
            index.write_segments(segment_rows("run-a", "ckpt", query_id, text, video_id, segments))
    index.update_library_ranks("run-a")
    index.ensure_indices()
    return uri


def test_prints_a_readable_table(db, capsys) -> None:
    assert main(["A person opens the refrigerator.", "--db", db, "--k", "3"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("note: run run-a")]
    assert lines[0].split() == ["#", "query", "matched", "match", "video", "start-end", "(s)", "score"]
    assert lines[2].split() == ["1", "a", "person", "opens", "the", "refrigerator", "same", "kitchen-1", "1.00-4.50",
                                "0.900"]
    assert lines[3].split()[-4:] == ["same", "kitchen-2", "2.00-5.50", "0.600"]
    assert len(lines) == 2 + 3


def test_a_sentence_never_grounded_is_said_so_and_marked(db, capsys) -> None:
    assert main(["someone opens the fridge", "--db", db, "--k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith('note: no grounded query matches "someone opens the fridge"; nearest '
                               '"a person opens the refrigerator" (0.')
    assert lines[0].endswith("; ground it with --live or add it to the collection")
    table = [line for line in lines if not line.startswith("note:")]
    assert all(line.split()[6] == "OTHER" for line in table[2:])  # every row marked as another sentence's moments


def test_runs_table_says_whether_scores_compare_across_videos(tmp_path, capsys) -> None:
    uri = str(tmp_path / "db")
    index = Index(uri)
    vector = embed_texts(["the blue ball rises"])
    for run in ("plain", "calibrated", "unknown"):
        index.write_queries(query_rows(run, "ckpt", ["q0"], ["the blue ball rises"], vector))
        index.write_segments(segment_rows(run, "ckpt", "q0", "the blue ball rises", "v1",
                                          np.array([[1.0, 2.0, 0.5, 0.5, 1.0]])))
        index.update_library_ranks(run)
    record_run(uri, RunRecord("plain", "batch", "ckpt-a", "/c.pt", "/features", 0))
    record_run(uri, RunRecord("calibrated", "batch", "ckpt-b", "/c.pt", "/features", 2))
    answer = Index(uri).answer("the red ball rises", k=5)
    assert not answer.grounded and answer.nearest_query == "the blue ball rises"
    assert 0.6 < answer.nearest_similarity < 0.97
    calibrated = dict(zip(answer.rows.column("run_id").to_pylist(), answer.rows.column("calibrated").to_pylist(),
                          strict=True))
    assert calibrated == {"plain": False, "calibrated": True, "unknown": None}
    assert set(answer.rows.column("query_match").to_pylist()) == {"other"}
    notices = answer.notices()
    assert notices[0].startswith('no grounded query matches "the red ball rises"; nearest "the blue ball rises"')
    assert any(n.startswith("run plain: its checkpoint was trained without negative pairs") for n in notices)
    assert any(n.startswith("run unknown: the index does not record") for n in notices)
    assert not any(n.startswith("run calibrated") for n in notices)
    same = Index(uri).answer("The blue ball rises.", k=5, run_id="calibrated")
    assert same.grounded and same.notices() == []
    assert same.rows.column("query_match").to_pylist() == ["same"]


def test_json_with_filters(db, capsys) -> None:
    argv = ["cutting an onion", "--db", db, "--json", "--video", "kitchen-2", "--min-score", "0.5", "--run-id",
            "run-a"]
    assert main(argv) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(row["query_id"], row["video_id"], row["start_s"], row["end_s"]) for row in rows] == [
        ("q1", "kitchen-2", 2.0, 5.5),  # the query nearest in meaning first, then the next one
        ("q0", "kitchen-2", 2.0, 5.5),
    ]
    assert rows[0]["score"] == pytest.approx(0.6) and rows[0]["query_similarity"] > rows[1]["query_similarity"]


def test_no_match_says_so(db, capsys) -> None:
    assert main(["a person opens the refrigerator", "--db", db, "--run-id", "another-run"]) == 0
    assert capsys.readouterr().out.strip().splitlines() == [
        'note: no grounded query matches "a person opens the refrigerator" with these filters; ground it with '
        '--live or add it to the collection', "no segments found"]


def test_bad_input_exits_2_with_one_line(db, tmp_path) -> None:
    missing = tmp_path / "missing"
    for argv, reason in ((["   ", "--db", db], "query text is empty"), (["a door", "--db", str(missing)], "no table")):
        done = subprocess.run([sys.executable, "-m", "jobs.search", *argv], cwd=REPO, capture_output=True,
                              text=True)
        assert done.returncode == 2
        assert done.stdout == "" and len(done.stderr.strip().splitlines()) == 1
        assert done.stderr.startswith("error: ") and reason in done.stderr and "Traceback" not in done.stderr
    assert not missing.exists()  # searching creates nothing


def test_live_mode_names_a_missing_checkpoint(tmp_path, capsys) -> None:
    code = main(["a door", "--live", "--checkpoint", str(tmp_path / "c.pt"), "--features", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "c.pt" in err and len(err.splitlines()) == 1
    with pytest.raises(SystemExit):
        main(["a door", "--live", "--exhaustive"])  # two stages or every video, not both


def test_help_names_every_option() -> None:
    text = build_parser().format_help()
    for option in ("--db", "--k", "--video", "--min-score", "--run-id", "--json", "--live", "--checkpoint",
                   "--features", "--save"):
        assert option in text


def test_a_token_file_goes_with_the_service_only(db, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("DRN_SERVE", raising=False)
    (tmp_path / "token").write_text("t" * 32)
    assert main(["a door", "--db", db, "--token-file", str(tmp_path / "token")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --token-file is the search service's token") and err.count("\n") == 1
