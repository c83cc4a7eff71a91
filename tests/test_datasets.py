"""Dataset loaders: counts on the real files, the cleaning rules, the val carve and bad input."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from drn.datasets import clean_pairs, dataset_names, load_split, options_of, splits_of
from drn.datasets.cleaning import LoadReport, RawPair
from drn.datasets.splits import is_val_video
from drn.errors import InputError
from drn.pairs import GroundingPair


def charades_dir(shared_data: Path) -> Path:
    return shared_data / "annotations" / "charades_sta"


# --- the real files -------------------------------------------------------------------------------------------


def test_charades_sta_real_counts(shared_data: Path) -> None:
    train = load_split("charades_sta", charades_dir(shared_data), "train")
    test = load_split("charades_sta", charades_dir(shared_data), "test")
    assert (train.report.raw_count, test.report.raw_count) == (12408, 3720)
    assert len(train.pairs) == 12404 and len(test.pairs) == 3720
    assert train.report.dropped == {"start >= end": [8251, 8439, 9622, 9623]}
    # README: 2367 of the 16128 pairs end after the CSV duration; 3 of those are among the 4 dropped pairs.
    assert train.report.num_clipped + test.report.num_clipped == 2367 - 3
    assert all(0 <= p.start_s < p.end_s <= p.duration_s for p in train.pairs + test.pairs)
    first = test.pairs[0]
    assert first.qid == 0 and first.video_id == "3MSZA" and first.query == "person turn a light on."
    assert [p.qid for p in train.pairs][8250:8253] == [8250, 8252, 8253]  # qids do not shift after a drop


def test_charades_sta_collapses_double_spaces(shared_data: Path) -> None:
    test = load_split("charades_sta", charades_dir(shared_data), "test")
    by_qid = {p.qid: p for p in test.pairs}
    assert by_qid[1316].query == "a person puts a cup into a cupboard."  # file line 1317 has a double space
    assert all("  " not in p.query and p.query == p.query.strip() for p in test.pairs)


def test_charades_sta_val_is_carved_from_train_by_video(shared_data: Path) -> None:
    folder = charades_dir(shared_data)
    full = load_split("charades_sta", folder, "train")
    val = load_split("charades_sta", folder, "val")
    rest = load_split("charades_sta", folder, "train", exclude_val=True)
    assert sorted(p.qid for p in val.pairs + rest.pairs) == sorted(p.qid for p in full.pairs)
    assert not {p.video_id for p in val.pairs} & {p.video_id for p in rest.pairs}
    assert 0.07 < len(val.pairs) / len(full.pairs) < 0.13
    again = load_split("charades_sta", folder, "val")
    assert [p.qid for p in again.pairs] == [p.qid for p in val.pairs]
    other_seed = load_split("charades_sta", folder, "val", val_seed=1)
    assert {p.video_id for p in other_seed.pairs} != {p.video_id for p in val.pairs}
    assert "carved" in val.report.notes[0]


def test_charades_sta_accepts_the_split_file(shared_data: Path) -> None:
    loaded = load_split("charades_sta", charades_dir(shared_data) / "charades_sta_test.txt", "test")
    assert len(loaded.pairs) == 3720
    with pytest.raises(InputError, match="'train' file but split 'test'"):
        load_split("charades_sta", charades_dir(shared_data) / "charades_sta_train.txt", "test")


def test_activitynet_real_counts(shared_data: Path) -> None:
    folder = shared_data / "annotations" / "activitynet_captions"
    raw = {split: load_split("activitynet", folder, split) for split in ("train", "val_1", "val_2")}
    assert [raw[s].report.raw_count for s in ("train", "val_1", "val_2")] == [37421, 17505, 17031]
    assert raw["train"].report.num_dropped == 4 and len(raw["train"].pairs) == 37417
    assert [raw[s].report.num_clipped for s in ("train", "val_1", "val_2")] == [261, 134, 111]
    pair = raw["val_2"].pairs[1]
    assert pair.qid == 1 and pair.video_id == "v_uqiMw7tQ1Cc" and pair.query.startswith("One man is holding")
    assert (pair.start_s, pair.end_s, pair.duration_s) == (4.14, 33.36, 55.15)


def test_tacos_real_counts_and_frames_to_seconds(shared_data: Path) -> None:
    folder = shared_data / "annotations" / "tacos"
    counts = [load_split("tacos", folder, split).report.raw_count for split in ("train", "val", "test")]
    assert counts == [9790, 4436, 4001]
    test = load_split("tacos", folder, "test")
    first = test.pairs[0]
    assert first.video_id == "s30-d52.avi" and first.query == "She took out kiwi"
    assert first.start_s == pytest.approx(141 / 29.4) and first.end_s == pytest.approx(354 / 29.4)
    assert first.duration_s == pytest.approx(7346 / 29.4)
    assert test.report.num_clipped == 5
    assert all(p.end_s <= p.duration_s for p in test.pairs)


# --- cleaning rules on hand-made pairs -------------------------------------------------------------------------


def test_cleaning_rules_hand_worked() -> None:
    raw = [
        RawPair(0, "a", "  open   the\tdoor ", 1.0, 4.0, 10.0),  # kept, whitespace collapsed
        RawPair(1, "a", "x", 5.0, 5.0, 10.0),  # start >= end: dropped
        RawPair(2, "a", "x", 8.0, 12.0, 10.0),  # end clipped to 10
        RawPair(3, "a", "x", -1.0, 2.0, 10.0),  # start clipped to 0
        RawPair(4, "a", "x", 10.0, 11.0, 10.0),  # starts at the duration: dropped
        RawPair(5, "a", "   ", 1.0, 2.0, 10.0),  # empty query: dropped
        RawPair(6, "b", "x", 1.0, 2.0, 0.0),  # no usable duration: dropped
    ]
    report = LoadReport("test", "train", ())
    pairs = clean_pairs(raw, report)
    assert [(p.qid, p.query, p.start_s, p.end_s) for p in pairs] == [
        (0, "open the door", 1.0, 4.0),
        (2, "x", 8.0, 10.0),
        (3, "x", 0.0, 2.0),
    ]
    assert report.raw_count == 7
    assert report.dropped == {"start >= end": [1], "start >= duration": [4], "empty query": [5], "duration <= 0": [6]}
    assert report.clipped == {"end > duration": [2], "start < 0": [3]}
    assert report.num_dropped == 4 and report.num_clipped == 2 and report.normalized_queries == 2
    assert {type(p) for p in pairs} == {GroundingPair}  # clean pairs carry no source line


def test_raw_pair_is_a_grounding_pair_with_its_line() -> None:
    pair_fields = [f.name for f in dataclasses.fields(GroundingPair)]
    assert [f.name for f in dataclasses.fields(RawPair)] == [*pair_fields, "line"]
    raw = RawPair(3, "v", "q", 1.0, 2.0, 10.0, line=7)
    assert raw.line == 7 and raw.end_frac == pytest.approx(0.2)


# --- Charades-STA format errors --------------------------------------------------------------------------------


def write_charades(folder: Path, train: str, csv_rows: str = "AAAAA,10.0\nBBBBB,20.0\n") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "charades_sta_train.txt").write_text(train)
    (folder / "charades_sta_test.txt").write_text("AAAAA 0.0 5.0##a test\n")
    (folder / "Charades_v1_train.csv").write_text("id,subject,length\n" + csv_rows.replace(",", ",S,"))
    return folder


def test_charades_malformed_line_names_file_and_line(tmp_path: Path) -> None:
    folder = write_charades(tmp_path, "AAAAA 0.0 5.0##ok\nAAAAA 0.0 5.0 no separator\n")
    with pytest.raises(InputError, match=r"charades_sta_train\.txt, line 2: expected 'VIDEO START END##SENTENCE'"):
        load_split("charades_sta", folder, "train")
    write_charades(tmp_path, "AAAAA 0.0 5.0##ok\n\nAAAAA zero 5.0##bad\n")
    with pytest.raises(InputError, match=r"line 3: field 'start' is not a number"):
        load_split("charades_sta", folder, "train")


def test_charades_missing_duration_names_the_video(tmp_path: Path) -> None:
    folder = write_charades(tmp_path, "AAAAA 0.0 5.0##ok\nCCCCC 1.0 2.0##no csv row\n")
    with pytest.raises(InputError, match=r"line 2: video 'CCCCC' has no duration in Charades_v1_train\.csv"):
        load_split("charades_sta", folder, "train")


def test_charades_csv_without_length_column(tmp_path: Path) -> None:
    folder = write_charades(tmp_path, "AAAAA 0.0 5.0##ok\n")
    (folder / "Charades_v1_train.csv").write_text("id,duration\nAAAAA,10\n")
    with pytest.raises(InputError, match=r"Charades_v1_train\.csv, line 1: missing column\(s\) length"):
        load_split("charades_sta", folder, "train")


def test_charades_small_file_qids_and_cleaning(tmp_path: Path) -> None:
    folder = write_charades(tmp_path, "AAAAA 0.0 5.0##one\nBBBBB 9.0 4.0##two\nBBBBB 15.0 25.0##three  \n")
    loaded = load_split("charades_sta", folder, "train")
    assert [(p.qid, p.end_s, p.query) for p in loaded.pairs] == [(0, 5.0, "one"), (2, 20.0, "three")]
    assert loaded.report.dropped == {"start >= end": [1]} and loaded.report.clipped == {"end > duration": [2]}


@pytest.mark.parametrize("dataset", ["charades_sta", "activitynet", "tacos", "jsonl"])
def test_unknown_split_is_an_error(tmp_path: Path, dataset: str) -> None:
    with pytest.raises(InputError, match=r"unknown split 'dev' for dataset .*choose one of"):
        load_split(dataset, tmp_path, "dev")


def test_unknown_dataset_and_option() -> None:
    assert dataset_names() == ["charades_sta", "activitynet", "tacos", "jsonl"]
    assert splits_of("activitynet") == ("train", "val_1", "val_2")
    assert "durations" in options_of("jsonl") and options_of("tacos") == ()
    with pytest.raises(InputError, match="unknown dataset 'kinetics'"):
        load_split("kinetics", ".", "train")
    with pytest.raises(InputError, match="dataset tacos has no option"):
        load_split("tacos", ".", "train", val_seed=3)


def test_missing_folder_and_missing_split_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="annotations path does not exist"):
        load_split("tacos", tmp_path / "nowhere", "train")
    with pytest.raises(InputError, match="no test.json in the annotations folder"):
        load_split("tacos", tmp_path, "test")


def test_empty_file_is_an_error(tmp_path: Path) -> None:
    write_charades(tmp_path, "\n  \n")
    with pytest.raises(InputError, match=r"charades_sta_train\.txt: file is empty"):
        load_split("charades_sta", tmp_path, "train")
    (tmp_path / "test.json").write_text("")
    with pytest.raises(InputError, match="file is empty"):
        load_split("tacos", tmp_path, "test")


def test_non_utf8_bytes_name_the_line(tmp_path: Path) -> None:
    folder = write_charades(tmp_path, "AAAAA 0.0 5.0##ok\n")
    (folder / "charades_sta_train.txt").write_bytes(b"AAAAA 0.0 5.0##ok\nAAAAA 1.0 2.0##caf\xe9\n")
    with pytest.raises(InputError, match=r"charades_sta_train\.txt, line 2: not UTF-8 text \(byte 0xe9\)"):
        load_split("charades_sta", folder, "train")


# --- JSON datasets ---------------------------------------------------------------------------------------------


def test_activitynet_layout_errors(tmp_path: Path) -> None:
    path = tmp_path / "train.json"
    path.write_text('{"v1": {"duration": 10,\n "timestamps": [[0, 1]], "sentences": []}}')
    with pytest.raises(InputError, match="video 'v1': 1 timestamps but 0 sentences"):
        load_split("activitynet", tmp_path, "train")
    path.write_text('{"v1": {"timestamps": [[0, 1]], "sentences": ["a"]}}')
    with pytest.raises(InputError, match="video 'v1': missing field 'duration'"):
        load_split("activitynet", tmp_path, "train")
    path.write_text('{"v1": {"duration": 10,\n "timestamps": [[0, 1]]\n "sentences": ["a"]}}')
    with pytest.raises(InputError, match=r"train\.json, line 3: invalid JSON"):
        load_split("activitynet", tmp_path, "train")


def test_tacos_frames_are_divided_by_fps_and_clipped(tmp_path: Path) -> None:
    data = {
        "s1.avi": {"timestamps": [[20, 120], [30, 10]], "sentences": [" cut  it", "b"], "fps": 10, "num_frames": 100},
        "s2.avi": {"timestamps": [[0, 50]], "sentences": ["c"], "fps": 25.0, "num_frames": 250},
    }
    (tmp_path / "val.json").write_text(json.dumps(data))
    loaded = load_split("tacos", tmp_path, "val")
    assert [(p.qid, p.video_id, p.query, p.start_s, p.end_s, p.duration_s) for p in loaded.pairs] == [
        (0, "s1.avi", "cut it", 2.0, 10.0, 10.0),
        (2, "s2.avi", "c", 0.0, 2.0, 10.0),
    ]
    assert loaded.report.dropped == {"start >= end": [1]} and loaded.report.clipped == {"end > duration": [0]}


# --- own data (JSONL) ------------------------------------------------------------------------------------------


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def own_records(videos: int, per_video: int = 2) -> list[dict]:
    return [
        {"video_id": f"vid{v:03d}", "query": f"query {v} {k}", "start_s": k, "end_s": k + 2.0, "duration_s": 30.0}
        for v in range(videos)
        for k in range(per_video)
    ]


def test_jsonl_val_carved_when_absent_and_train_excludes_it(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "train.jsonl", own_records(60))
    write_jsonl(tmp_path / "test.jsonl", own_records(5))
    train = load_split("jsonl", tmp_path, "train")
    val = load_split("jsonl", tmp_path, "val", val_fraction=0.2)
    train_02 = load_split("jsonl", tmp_path, "train", val_fraction=0.2)
    assert len(load_split("jsonl", tmp_path, "test").pairs) == 10
    assert {p.video_id for p in val.pairs} == {f"vid{v:03d}" for v in range(60) if is_val_video(f"vid{v:03d}", 0.2)}
    assert 0 < len(val.pairs) < 120 and len(val.pairs) + len(train_02.pairs) == 120
    assert not {p.qid for p in val.pairs} & {p.qid for p in train_02.pairs}
    assert len(train.pairs) < 120  # default fraction 0.1 also removes the val videos
    assert len(load_split("jsonl", tmp_path, "train", exclude_val=False).pairs) == 120


def test_jsonl_with_val_file_uses_it(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "train.jsonl", own_records(10))
    write_jsonl(tmp_path / "val.jsonl", own_records(3))
    assert len(load_split("jsonl", tmp_path, "train").pairs) == 20
    assert len(load_split("jsonl", tmp_path, "val").pairs) == 6


def test_jsonl_qids_given_or_positional(tmp_path: Path) -> None:
    records = own_records(2)
    records[1]["qid"] = "custom"
    path = write_jsonl(tmp_path / "test.jsonl", records)
    assert [p.qid for p in load_split("jsonl", path, "test").pairs] == [0, "custom", 2, 3]
    records[3]["qid"] = "0"
    write_jsonl(path, records)
    with pytest.raises(InputError, match=r"test\.jsonl, line 4: qid '0' repeats the qid of line 1"):
        load_split("jsonl", path, "test")


def test_jsonl_missing_duration_needs_the_mapping(tmp_path: Path) -> None:
    records = own_records(2)
    del records[2]["duration_s"]
    path = write_jsonl(tmp_path / "test.jsonl", records)
    with pytest.raises(InputError, match=r"test\.jsonl, line 3: no 'duration_s' for video 'vid001'"):
        load_split("jsonl", tmp_path, "test")
    loaded = load_split("jsonl", path, "test", durations={"vid001": 1.5})
    assert loaded.pairs[2].duration_s == 1.5 and loaded.pairs[2].end_s == 1.5  # clipped to the given duration
    with pytest.raises(InputError, match="nor in the given durations"):
        load_split("jsonl", path, "test", durations={"other": 1.0})


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"video_id": "v", "query": "q", "start_s": 0}', "missing field 'end_s'"),
        ('{"video_id": "v", "query": "q", "start_s": "0", "end_s": 1, "duration_s": 2}', "'start_s' must be a number"),
        ('{"video_id": "v", "query": "q", "start_s": 0, "end_s": NaN, "duration_s": 2}', "'end_s' must be finite"),
        ('["v", "q", 0, 1]', "expected a JSON object"),
        ('{"video_id": "v", "query": "q", ', "invalid JSON"),
    ],
)
def test_jsonl_malformed_lines(tmp_path: Path, line: str, message: str) -> None:
    good = json.dumps(own_records(1)[0])
    (tmp_path / "test.jsonl").write_text(f"{good}\n{line}\n")
    with pytest.raises(InputError, match=rf"test\.jsonl, line 2: .*{message}"):
        load_split("jsonl", tmp_path, "test")
