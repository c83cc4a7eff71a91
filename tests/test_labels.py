"""Video labels (``drn.datasets.labels``) and the relevance convention of corpus evaluation, worked by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from drn.checkpoint import save_checkpoint
from drn.config import load_config
from drn.corpus import CorpusConfig, RankedMoments, corpus_queries, evaluate_corpus, format_corpus_result
from drn.datasets import load_split
from drn.datasets.labels import (
    Action,
    VideoLabels,
    check_label_videos,
    dataset_labels,
    read_charades_actions,
    read_labels,
    read_labels_jsonl,
)
from drn.datasets.synthetic import make_synthetic_benchmark
from drn.errors import InputError
from drn.model import new_model
from drn.pairs import GroundingPair
from drn.text import OpenVocabulary
from jobs.evaluate import main as evaluate_main
from tests.test_corpus import CONFIG, TINY  # the tiny model of the corpus tests

# v1 shows the door opened and someone sitting; v2 and v3 the door opened (v2's sentence was never written); v4 is
# labelled with nothing
LABELS = VideoLabels({
    "v1": [Action("open_door", 0.0, 10.0), Action("sit", 20.0, 30.0)],
    "v2": [Action("open_door", 5.0, 15.0)],
    "v3": [Action("open_door", 5.0, 15.0)],
}, source="hand")
PAIRS = [
    GroundingPair(0, "v1", "Person opens the door.", 0.0, 10.0, 40.0),
    GroundingPair(1, "v2", "person sits", 2.0, 4.0, 40.0),  # nothing labelled there: the text has no label
    GroundingPair(2, "v3", "person opens the door", 5.0, 15.0, 40.0),
    GroundingPair(3, "v4", "person laughs", 1.0, 2.0, 40.0),
]
VIDEOS = {"v1", "v2", "v3", "v4"}


def hand_ranked() -> dict[str, RankedMoments]:
    return {
        # v2 [5, 14]: the door of an unannotated video (IoU 0.9 with its labelled action); v4: no labels; v1 [20, 30]:
        # the right video at the wrong time (it holds 'sit' there, not the door); v3 [6, 15]: annotated, IoU 0.9
        "person opens the door": RankedMoments(["v2", "v4", "v1", "v3"], np.array(
            [[5, 14, 0.9], [0, 10, 0.8], [20, 30, 0.7], [6, 15, 0.6]], float)),
        "person sits": RankedMoments(["v2"], np.array([[2, 4, 0.5]], float)),
        "person laughs": RankedMoments(["v1"], np.array([[1, 2, 0.5]], float)),
    }


def one_line_error(excinfo: pytest.ExceptionInfo, path: Path, line: int | None) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and str(path) in message, message
    if line is not None:
        assert f"line {line}:" in message, message
    return message


# ---- VideoLabels ---------------------------------------------------------------------------------------------


def test_label_at_takes_the_best_overlap_earlier_on_ties() -> None:
    labels = VideoLabels({"v": [Action("a", 0, 10), Action("b", 0, 10), Action("c", 8, 20)]})
    assert labels.label_at("v", 0, 10) == "a"  # a and b tie at IoU 1: the earlier in file order
    assert labels.label_at("v", 9, 20) == "c"
    assert labels.label_at("v", 30, 40) is None  # nothing overlaps
    assert labels.label_at("v", 10, 12) == "c"  # touching a and b at 10 is no overlap
    assert labels.label_at("unknown", 0, 10) is None
    assert labels.videos_with("a") == {"v"} and labels.holds("v", "c") and not labels.holds("v", "z")
    assert labels.video_ids() == {"v"} and labels.actions["v"][2] == Action("c", 8.0, 20.0)


def test_text_labels_are_a_majority_vote_over_the_moments() -> None:
    labels = VideoLabels({"x": [Action("door", 0, 10)], "y": [Action("door", 0, 10)],
                          "z": [Action("sit", 0, 10), Action("door", 0, 40)],
                          "w": [Action("b", 0, 10)], "u": [Action("a", 0, 10)]})

    def pair(video: str, query: str, start: float, end: float) -> GroundingPair:
        return GroundingPair(0, video, query, start, end, 60.0)

    found = labels.text_labels([
        pair("x", "Open the door", 0, 10), pair("y", "open the door.", 2, 10), pair("z", "open the door", 0, 10),
        pair("x", "tie", 0, 5), pair("z", "tie", 0, 10),  # door at IoU 0.5, sit at IoU 1: one vote each
        pair("w", "alphabet", 0, 10), pair("u", "alphabet", 0, 10),  # b and a: one vote each, same IoU
        pair("x", "nowhere", 20, 30), pair("q", "nowhere", 0, 10),
    ])
    assert found == {"open the door": "door", "tie": "sit", "alphabet": "a", "nowhere": None}


# ---- relevance in corpus evaluation --------------------------------------------------------------------------


def test_hand_worked_relevance() -> None:
    queries = corpus_queries(PAIRS)
    result = evaluate_corpus(queries, hand_ranked(), num_videos=4, labels=LABELS, video_ids=VIDEOS)
    rel = result.relevance
    assert rel is not None
    # exact: the door's first hit is v3 at rank 3; 'sits' hits at rank 0; 'laughs' ranks v1 only (its moment is in v4)
    assert result.recall[(1, 0.5)] == pytest.approx(100 / 3) and result.recall[(10, 0.7)] == pytest.approx(200 / 3)
    # only the door has a label ('sits' and 'laughs' overlap no labelled action): left out, counted
    assert (rel.labelled_queries, rel.unlabelled_queries) == (1, 2)
    # relevance: v2 [5, 14] overlaps v2's door at IoU 0.9, so the door hits at rank 0 where it missed exactly
    assert rel.recall[(1, 0.5)] == rel.recall[(1, 0.7)] == 100.0
    assert rel.exact_recall[(1, 0.5)] == 0.0 and rel.exact_recall[(10, 0.5)] == 100.0
    # P@10: v2 and v3 are relevant; v4 (no labels) and v1 at the wrong time are not; 6 missing results count as not
    assert rel.precision == {0.5: 20.0, 0.7: 20.0}
    # video R@1: v2 holds the door (exactly it holds no door sentence: of the three texts only 'sits' hits)
    assert rel.video_recall == {1: 100.0, 10: 100.0} and result.video_recall[1] == pytest.approx(100 / 3)
    assert rel.video_recall_chance[1] == pytest.approx(75.0)  # 3 of 4 videos hold the door
    assert rel.videos_per_label == {"mean": 3.0, "median": 3.0, "max": 3.0}
    assert rel.labelled_videos == 3 and rel.num_videos == 4 and rel.source == "hand"
    # '>': v2's IoU 0.9 still passes 0.7; v3 [6, 15] too
    strict = evaluate_corpus(queries, hand_ranked(), num_videos=4, labels=LABELS, video_ids=VIDEOS,
                             config=CorpusConfig(comparison=">")).relevance
    assert strict is not None and strict.recall[(1, 0.7)] == 100.0


def test_the_right_label_at_the_wrong_time_is_not_relevant() -> None:
    ranked = {**hand_ranked(), "person opens the door": RankedMoments(["v2", "v1"], np.array(
        [[20, 30, 0.9], [20, 30, 0.8]], float))}
    rel = evaluate_corpus(corpus_queries(PAIRS), ranked, 4, labels=LABELS, video_ids=VIDEOS).relevance
    assert rel is not None and rel.recall[(100, 0.5)] == 0.0 and rel.precision[0.5] == 0.0
    assert rel.video_recall[1] == 100.0  # the video holds the label all the same


def test_every_exact_hit_is_a_relevance_hit_and_given_text_labels_win() -> None:
    given = {"person opens the door": "open_door", "person sits": "sit", "person laughs": None}
    result = evaluate_corpus(corpus_queries(PAIRS), hand_ranked(), 4, labels=LABELS, text_labels=given,
                             video_ids=VIDEOS)
    rel = result.relevance
    assert rel is not None and (rel.labelled_queries, rel.unlabelled_queries) == (2, 1)
    # 'sits' holds label 'sit' (v1 only), but its own annotated moment in v2 is relevant too: an exact hit stays one
    assert rel.recall[(1, 0.5)] == 100.0 and rel.exact_recall[(1, 0.5)] == 50.0
    assert rel.videos_per_label == {"mean": 2.0, "median": 2.0, "max": 3.0}
    assert "as given by the caller" in rel.convention


def test_label_holders_count_among_the_ranked_videos_only() -> None:
    labels = VideoLabels({**LABELS.actions, "elsewhere": (Action("open_door", 0, 5),)}, source="hand")
    default = evaluate_corpus(corpus_queries(PAIRS), hand_ranked(), 4, labels=labels).relevance
    assert default is not None and default.videos_per_label["max"] == 3.0  # the queries' videos: v1..v4
    given = evaluate_corpus(corpus_queries(PAIRS), hand_ranked(), 4, labels=labels, video_ids=["v1", "v2"]).relevance
    assert given is not None and given.videos_per_label["max"] == 2.0 and given.labelled_videos == 2


def test_both_conventions_are_printed_and_the_unlabelled_output_is_unchanged() -> None:
    plain = evaluate_corpus(corpus_queries(PAIRS), hand_ranked(), 4)
    assert plain.relevance is None and "relevance" not in plain.to_dict()
    assert "relevance" not in format_corpus_result(plain)
    result = evaluate_corpus(corpus_queries(PAIRS), hand_ranked(), 4, labels=LABELS, video_ids=VIDEOS)
    text = format_corpus_result(result, title="hand - corpus")
    rows = {line.split("  ")[0]: line for line in text.splitlines()}
    assert "exact" in rows and "relevance" in rows and "exact, queries with a label" in rows
    assert "relevance (query's labelled action, labels from hand): video R@1 100.00 (chance 75.00)" in text
    assert "P@10,IoU=0.5 20.00" in text and "1 of 3 queries have a label (2 without" in text
    assert "convention (exact): corpus:" in text and "convention (relevance): labels from hand" in text
    out = json.loads(json.dumps(result.to_dict()))
    assert out["relevance"]["recall"]["R@1,IoU=0.5"] == 100.0 and out["relevance"]["precision"]["P@10,IoU=0.7"] == 20
    assert out["relevance"]["unlabelled_queries"] == 2 and out["recall"] == plain.to_dict()["recall"]
    nothing = evaluate_corpus(corpus_queries(PAIRS), hand_ranked(), 4, labels=VideoLabels({}, "empty"))
    assert nothing.relevance is not None and nothing.relevance.labelled_queries == 0
    assert "no query of the split has a label" in format_corpus_result(nothing)


# ---- reading -------------------------------------------------------------------------------------------------

CSV_HEADER = "id,subject,actions,length\n"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_charades_actions_parse_with_lines_and_reversed_actions_left_out(tmp_path) -> None:
    path = write(tmp_path / "Charades_v1_test.csv", CSV_HEADER + 'AAA,s,"c077 12.10 18.00;c079 11.80 17.30",20\n'
                 "BBB,s,,10\n" + 'CCC,"multi\nline",c001 0 5;c002 9.0 4.0;,30\n')
    labels = read_charades_actions([path])
    assert labels.actions == {"AAA": (Action("c077", 12.1, 18.0), Action("c079", 11.8, 17.3)),
                              "CCC": (Action("c001", 0.0, 5.0),)}  # BBB has no actions
    assert labels.lines == {"AAA": (str(path), 2), "BBB": (str(path), 3), "CCC": (str(path), 4)}
    assert labels.notes == ["left out 1 actions whose start is after their end (Charades_v1_test.csv line 4)"]
    assert read_labels(path).actions == labels.actions and str(path) in labels.source


@pytest.mark.parametrize(("rows", "line", "message"), [
    ("AAA,s,c077 12.10,20\n", 2, "action 'c077 12.10' is not 'CLASS START END'"),
    ("AAA,s,c077 1 2;c078 x 3,20\n", 2, "action 'c078 x 3' has a start that is not a finite number"),
    ("AAA,s,c077 1 2,20\nBBB,s,c078 1 nan,20\n", 3, "has a end that is not a finite number"),
    ("AAA,s,c077 -1 2,20\n", 2, "action 'c077 -1 2' has a negative start"),
    ("AAA,s,c077 1 2,20\nAAA,s,,20\n", 3, "video 'AAA' repeats Charades_v1_x.csv line 2"),
    (",s,c077 1 2,20\n", 2, "empty field 'id'"),
])
def test_bad_charades_actions_are_one_line_errors(tmp_path, rows: str, line: int, message: str) -> None:
    path = write(tmp_path / "Charades_v1_x.csv", CSV_HEADER + rows)
    with pytest.raises(InputError) as excinfo:
        read_charades_actions([path])
    assert message in one_line_error(excinfo, path, line)


def test_a_csv_without_actions_is_an_error_and_no_labels_for_the_dataset(tmp_path) -> None:
    path = write(tmp_path / "Charades_v1_train.csv", "id,length\nAAA,20\n")
    with pytest.raises(InputError) as excinfo:
        read_charades_actions([path])
    assert "missing column(s) actions" in one_line_error(excinfo, path, 1)
    assert dataset_labels("charades_sta", tmp_path) is None
    assert dataset_labels("activitynet", tmp_path) is None
    with pytest.raises(InputError) as excinfo:
        read_labels(write(tmp_path / "labels.txt", "x"))
    assert ".csv or a .jsonl" in one_line_error(excinfo, tmp_path / "labels.txt", None)


def label_line(video: object = "v1", label: object = "door", start: object = 1.0, end: object = 2.0) -> str:
    return json.dumps({"video_id": video, "label": label, "start_s": start, "end_s": end})


def test_labels_jsonl_parse_with_first_lines(tmp_path) -> None:
    path = write(tmp_path / "labels.jsonl", "\n".join([label_line(), "", label_line("v2", "sit", 0, 3),
                                                       label_line("v1", "sit", 5, 9)]) + "\n")
    labels = read_labels_jsonl(path)
    assert labels.actions == {"v1": (Action("door", 1.0, 2.0), Action("sit", 5.0, 9.0)), "v2": (Action("sit", 0, 3),)}
    assert labels.lines == {"v1": (str(path), 1), "v2": (str(path), 3)} and labels.source == str(path)
    assert read_labels(path).videos_with("sit") == {"v1", "v2"}


@pytest.mark.parametrize(("line_text", "message"), [
    ('{"video_id": "v1", "label": "door", "start_s": 1}', "missing field 'end_s'"),
    (label_line(label=3), "field 'label' must be a non-empty string, got 3"),
    (label_line(video=""), "field 'video_id' must be a non-empty string"),
    (label_line(start="1"), "field 'start_s' must be a number, got '1'"),
    (label_line(start=-1.0), "field 'start_s' must not be negative"),
    (label_line(start=5, end=2), "start_s 5 is after end_s 2"),
    ('{"video_id": "v1", "label"', "invalid JSON"),
    ("[1, 2]", "expected a JSON object"),
])
def test_bad_labels_jsonl_lines_are_one_line_errors(tmp_path, line_text: str, message: str) -> None:
    path = write(tmp_path / "labels.jsonl", label_line() + "\n" + line_text + "\n")
    with pytest.raises(InputError) as excinfo:
        read_labels_jsonl(path)
    assert message in one_line_error(excinfo, path, 2)


def test_labels_of_unknown_videos_name_the_first_and_count_them(tmp_path) -> None:
    path = write(tmp_path / "labels.jsonl", "\n".join([label_line("v1"), label_line("x"), label_line("y"),
                                                       label_line("x")]) + "\n")
    labels = read_labels_jsonl(path)
    check_label_videos(labels, {"v1", "x", "y"}, "here")
    with pytest.raises(InputError) as excinfo:
        check_label_videos(labels, {"v1"}, "the folder")
    assert "video 'x' is in no annotation file of the folder (2 unknown videos)" in one_line_error(excinfo, path, 2)


def test_jsonl_dataset_labels_sit_beside_the_splits_and_are_not_a_split(tmp_path) -> None:
    pair = {"video_id": "v1", "query": "open the door", "start_s": 1.0, "end_s": 2.0, "duration_s": 10.0}
    write(tmp_path / "train.jsonl", json.dumps(pair) + "\n" + json.dumps({**pair, "video_id": "v2"}) + "\n")
    write(tmp_path / "test.jsonl", json.dumps({**pair, "video_id": "v3"}) + "\n")
    assert dataset_labels("jsonl", tmp_path) is None
    write(tmp_path / "labels.jsonl", "\n".join(label_line(v) for v in ("v1", "v2", "v3")) + "\n")
    labels = dataset_labels("jsonl", tmp_path)
    assert labels is not None and labels.video_ids() == {"v1", "v2", "v3"}
    assert dataset_labels("jsonl", tmp_path / "test.jsonl") is not None  # a split's file: the labels beside it
    # the loader reads the splits by name: labels.jsonl is never taken as one
    assert [p.video_id for p in load_split("jsonl", tmp_path, "test").pairs] == ["v3"]
    assert {p.video_id for p in load_split("jsonl", tmp_path, "train", exclude_val=False).pairs} == {"v1", "v2"}
    write(tmp_path / "labels.jsonl", label_line("v1") + "\n" + label_line("v9") + "\n")
    with pytest.raises(InputError) as excinfo:
        dataset_labels("jsonl", tmp_path)
    message = one_line_error(excinfo, tmp_path / "labels.jsonl", 2)
    assert f"video 'v9' is in no annotation file of {tmp_path} (1 unknown video)" in message


def test_the_real_charades_actions_parse(shared_data) -> None:
    folder = shared_data / "annotations" / "charades_sta"
    if not (folder / "Charades_v1_train.csv").is_file():
        pytest.skip(f"no Charades metadata CSVs in {folder}")
    labels = dataset_labels("charades_sta", folder)
    assert labels is not None and len(labels) > 9000
    assert labels.notes and "left out 7 actions whose start is after their end" in labels.notes[0]
    counts = []
    for split in ("train", "test"):
        pairs = load_split("charades_sta", folder, split).pairs
        videos = {p.video_id for p in pairs}
        counts += [len(labels.actions.get(video, ())) for video in videos]
        # Charades-STA's moments were cut from these actions: every text gets a label
        assert all(label is not None for label in labels.text_labels(pairs).values())
    assert 7.0 < float(np.mean(counts)) < 8.2  # Charades-STA videos hold about 7.6 labelled actions each


# ---- jobs.evaluate --corpus ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def labelled_benchmark(tmp_path_factory) -> dict[str, str]:
    """A tiny synthetic benchmark with a hand-written labels.jsonl (each annotated event's colour) and an untrained
    tiny checkpoint (no training: the numbers only need to be computed both ways)."""
    root = tmp_path_factory.mktemp("labelled")
    bench = make_synthetic_benchmark(root / "syn", num_videos=12, feature_dim=8, seed=2)
    annotations = Path(bench.annotations)
    lines = []
    for split in ("train", "val", "test"):
        for text in (annotations / f"{split}.jsonl").read_text().splitlines():
            pair = json.loads(text)  # "the blue event before the purple event" shows a blue event there
            lines.append(label_line(pair["video_id"], pair["query"].split()[1], pair["start_s"], pair["end_s"]))
    write(annotations / "labels.jsonl", "\n".join(lines) + "\n")
    torch.manual_seed(0)
    config = load_config(CONFIG, TINY)
    save_checkpoint(root / "untrained.pt", new_model(config, OpenVocabulary()).eval(), OpenVocabulary(), stage=1)
    return {"annotations": str(annotations), "features": str(bench.features), "checkpoint": str(root / "untrained.pt"),
            "root": str(root)}


def corpus_cli(paths: dict[str, str], *flags: str) -> list[str]:
    return ["--corpus", "--dataset", "jsonl", "--annotations", paths["annotations"], "--split", "train",
            "--checkpoint", paths["checkpoint"], "--features", paths["features"], "--quiet", "--threads", "1", *flags]


def test_evaluate_corpus_prints_both_conventions(labelled_benchmark, capsys) -> None:
    paths = labelled_benchmark
    assert evaluate_main(corpus_cli(paths)) == 0
    printed = capsys.readouterr().out
    assert f"relevance (query's labelled action, labels from {paths['annotations']}/labels.jsonl)" in printed
    assert "\nexact " in printed and "\nrelevance " in printed and "convention (relevance):" in printed
    assert evaluate_main(corpus_cli(paths, "--json")) == 0
    out = json.loads(capsys.readouterr().out)
    rel = out["relevance"]
    assert rel["unlabelled_queries"] == 0 and rel["labelled_queries"] == out["num_queries"]
    assert rel["labelled_videos"] == out["num_videos"]
    for name, value in rel["recall"].items():  # the annotated moments are relevant: relevance never falls below
        assert value >= rel["exact_recall_same_queries"][name] == out["recall"][name]
    assert evaluate_main(corpus_cli(paths, "--json", "--no-labels")) == 0
    plain = json.loads(capsys.readouterr().out)
    assert "relevance" not in plain and plain["recall"] == out["recall"]
    # --labels: a file of its own, checked against the split, the dataset's files and the store
    own = write(Path(paths["root"]) / "own.jsonl", label_line("syn00000", "blue", 0.0, 5.0) + "\n")
    assert evaluate_main(corpus_cli(paths, "--json", "--labels", str(own))) == 0
    assert json.loads(capsys.readouterr().out)["relevance"]["source"] == str(own)


def test_bad_label_flags_are_one_line_errors(labelled_benchmark, capsys) -> None:
    paths = labelled_benchmark
    root = Path(paths["root"])
    unknown = write(root / "unknown.jsonl", label_line("syn00000") + "\n" + label_line("nowhere") + "\n")
    elsewhere = write(root / "elsewhere.csv", CSV_HEADER + "ZZZ,s,c001 0 1,10\n")
    for flags, message in (
        (("--labels", str(unknown)), f"{unknown}, line 2: video 'nowhere' is in no annotation file of"),
        (("--labels", str(elsewhere)), "the labels name none of the"),
        (("--labels", str(unknown), "--no-labels"), "exclude each other"),
        (("--labels", str(root / "absent.jsonl")), "file not found"),
    ):
        assert evaluate_main(corpus_cli(paths, *flags)) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    argv = ["--dataset", "jsonl", "--annotations", paths["annotations"], "--split", "train", "--checkpoint",
            paths["checkpoint"], "--features", paths["features"], "--no-labels"]
    assert evaluate_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--no-labels applies to --corpus only" in err[0], err
