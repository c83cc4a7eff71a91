"""The data jobs as a user runs them: subprocesses, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def run_job(job: str, *args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", f"jobs.{job}", *map(str, args)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture
def own_dataset(tmp_path: Path) -> Path:
    """A JSONL dataset: 3 test queries about two 20-second videos."""
    folder = tmp_path / "own"
    folder.mkdir()
    rows = [("a", "open the door", 0.0, 10.0), ("a", "close  it", 10.0, 20.0), ("b", "wave", 4.0, 8.0)]
    text = "".join(
        json.dumps({"video_id": v, "query": q, "start_s": s, "end_s": e, "duration_s": 20.0}) + "\n"
        for v, q, s, e in rows
    )
    (folder / "test.jsonl").write_text(text)
    (folder / "train.jsonl").write_text(text)
    return folder


def write_predictions(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


GOOD_PREDICTIONS = [
    {"qid": 0, "video_id": "a", "segments": [[0, 5, 0.9], [0, 10, 0.5]]},  # top-1 IoU 0.5, then 1.0
    {"qid": 1, "video_id": "a", "segments": [[10, 20, 0.7]]},  # IoU 1
    {"qid": 2, "video_id": "b", "segments": [[12, 16, 0.8]]},  # IoU 0
]


@pytest.mark.parametrize("job", ["inspect_dataset", "evaluate", "baseline"])
def test_help(job: str) -> None:
    result = run_job(job, "--help")
    assert result.returncode == 0 and "--annotations" in result.stdout and "--dataset" in result.stdout


def test_inspect_real_charades(shared_data: Path) -> None:
    folder = shared_data / "annotations" / "charades_sta"
    result = run_job("inspect_dataset", "--dataset", "charades_sta", "--annotations", folder, "--split", "train")
    assert result.returncode == 0, result.stderr
    assert "raw pairs 12408   pairs 12404   videos 5336" in result.stdout
    assert "dropped (start >= end): 4  qids 8251, 8439, 9622, 9623" in result.stdout
    assert "query length (words)" in result.stdout
    as_json = run_job(
        "inspect_dataset", "--dataset", "charades_sta", "--annotations", folder, "--split", "test", "--json"
    )
    summary = json.loads(as_json.stdout)
    assert summary["pairs"] == 3720 and summary["report"]["num_clipped"] == 562


def test_inspect_bad_line_exits_2_naming_file_and_line(own_dataset: Path) -> None:
    with (own_dataset / "test.jsonl").open("a") as out:
        out.write('{"video_id": "c", "query": "x", "start_s": 1}\n')
    result = run_job("inspect_dataset", "--dataset", "jsonl", "--annotations", own_dataset, "--split", "test")
    assert_one_line_error(result, "test.jsonl, line 4", "missing field 'end_s'")


def test_unknown_split_and_unsupported_option(own_dataset: Path) -> None:
    result = run_job("inspect_dataset", "--dataset", "jsonl", "--annotations", own_dataset, "--split", "dev")
    assert_one_line_error(result, "unknown split 'dev'")
    result = run_job("inspect_dataset", "--dataset", "tacos", "--annotations", own_dataset, "--val-seed", "1")
    assert_one_line_error(result, "--val-seed", "tacos")


def test_evaluate_prints_table_and_json(own_dataset: Path, tmp_path: Path) -> None:
    predictions = write_predictions(tmp_path / "p.jsonl", GOOD_PREDICTIONS)
    common = ["--dataset", "jsonl", "--annotations", own_dataset, "--split", "test", "--predictions", predictions]
    text = run_job("evaluate", *common)
    assert text.returncode == 0, text.stderr
    assert "jsonl test" in text.stdout and "convention: hit: IoU >= m" in text.stdout
    data = json.loads(run_job("evaluate", *common, "--json", "--ious", "0.1", "0.5").stdout)
    assert data["recall"] == {
        "R@1,IoU=0.1": pytest.approx(200 / 3, abs=1e-3),
        "R@1,IoU=0.5": pytest.approx(200 / 3, abs=1e-3),
        "R@5,IoU=0.1": pytest.approx(200 / 3, abs=1e-3),
        "R@5,IoU=0.5": pytest.approx(200 / 3, abs=1e-3),
    }
    assert data["miou"] == pytest.approx(50.0)
    strict = json.loads(run_job("evaluate", *common, "--json", "--ious", "0.5", "--comparison", "gt").stdout)
    assert strict["recall"]["R@1,IoU=0.5"] == pytest.approx(100 / 3, abs=1e-3)  # IoU exactly 0.5 no longer hits
    assert strict["recall"]["R@5,IoU=0.5"] == pytest.approx(200 / 3, abs=1e-3)
    assert strict["convention"]["comparison"] == ">"


@pytest.mark.parametrize(
    ("records", "fragments"),
    [
        (GOOD_PREDICTIONS[:2], ["no prediction for qid 2"]),
        (GOOD_PREDICTIONS + [GOOD_PREDICTIONS[0]], ["line 4", "qid 0 repeats"]),
        ([GOOD_PREDICTIONS[0], {**GOOD_PREDICTIONS[1], "video_id": "b"}, GOOD_PREDICTIONS[2]], ["line 2", "qid 1"]),
        ([{**GOOD_PREDICTIONS[0], "segments": [[5, 1, 0.3]]}, *GOOD_PREDICTIONS[1:]], ["line 1", "qid 0", "ends"]),
    ],
    ids=["missing", "repeated", "wrong-video", "end-before-start"],
)
def test_evaluate_faulty_predictions_exit_2(
    own_dataset: Path, tmp_path: Path, records: list[dict], fragments: list[str]
) -> None:
    predictions = write_predictions(tmp_path / "p.jsonl", records)
    result = run_job("evaluate", "--dataset", "jsonl", "--annotations", own_dataset, "--predictions", predictions)
    assert_one_line_error(result, "p.jsonl", *fragments)


def test_evaluate_allow_missing(own_dataset: Path, tmp_path: Path) -> None:
    predictions = write_predictions(tmp_path / "p.jsonl", GOOD_PREDICTIONS[:2])
    args = ["--dataset", "jsonl", "--annotations", own_dataset, "--predictions", predictions]
    data = json.loads(run_job("evaluate", *args, "--allow-missing", "--json").stdout)
    assert data["num_missing"] == 1 and data["recall"]["R@1,IoU=0.5"] == pytest.approx(200 / 3, abs=1e-3)


def test_baseline_on_real_charades_then_evaluate_its_file(shared_data: Path, tmp_path: Path) -> None:
    folder = shared_data / "annotations" / "charades_sta"
    out = tmp_path / "baselines"
    result = run_job("baseline", "--dataset", "charades_sta", "--annotations", folder, "--out", out, "--step", "0.05")
    assert result.returncode == 0, result.stderr
    assert "fixed_window [0.00, 0.30] fitted on train" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == ["fixed_window.json", "fixed_window.jsonl", "whole_video.jsonl"]
    scored = run_job(
        "evaluate", "--dataset", "charades_sta", "--annotations", folder, "--predictions", out / "fixed_window.jsonl",
        "--json",
    )  # fmt: skip
    recall = json.loads(scored.stdout)["recall"]
    assert [recall[f"R@1,IoU={m}"] for m in (0.3, 0.5, 0.7)] == pytest.approx([40.30, 30.65, 15.16], abs=0.005)


def test_durations_file_fills_missing_durations(tmp_path: Path) -> None:
    folder = tmp_path / "own"
    folder.mkdir()
    (folder / "test.jsonl").write_text('{"video_id": "a", "query": "q", "start_s": 1, "end_s": 9}\n')
    args = ["--dataset", "jsonl", "--annotations", folder, "--split", "test", "--json"]
    assert_one_line_error(run_job("inspect_dataset", *args), "test.jsonl, line 1", "no 'duration_s' for video 'a'")
    durations = tmp_path / "durations.csv"
    durations.write_text("video_id,duration_s\na,6.5\n")
    summary = json.loads(run_job("inspect_dataset", *args, "--durations", durations).stdout)
    assert summary["video_s"]["max"] == 6.5 and summary["report"]["clipped"] == {"end > duration": [0]}
