"""The demo: bad input exits with status 2 and one line, deleting nothing; its steps end to end on a tiny library."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from drn.errors import InputError
from jobs import demo as demo_cli
from jobs import train as train_cli
from moments.demo import steps
from moments.demo.report import format_comparison, where_things_are
from moments.demo.settings import DemoSettings, SettingError, prepare_output
from moments.index import Index
from pipeline.synthetic import ACTIONS, COLORS, SHAPES, paraphrase

REPO = Path(__file__).resolve().parents[1]


def run_main(capsys, *args: str) -> tuple[int, str]:
    code = demo_cli.main(list(args))
    return code, capsys.readouterr().err


@pytest.mark.parametrize("size", ["0", "-3"])
def test_size_below_one_is_refused(tmp_path, capsys, size):
    out = tmp_path / "out"
    code, err = run_main(capsys, "--out", str(out), "--size", size)
    assert code == 2
    assert err.startswith("error: --size must be at least 1") and err.count("\n") == 1
    assert not out.exists()


def test_too_small_library_is_refused(tmp_path, capsys):
    code, err = run_main(capsys, "--out", str(tmp_path / "out"), "--size", "2")
    assert code == 2 and "--size must be at least 5" in err


def test_non_empty_output_without_force_deletes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    (out / "features").mkdir(parents=True)
    (out / "features" / "shard.parquet").write_bytes(b"keep me")
    (out / "notes.txt").write_text("mine")
    code, err = run_main(capsys, "--out", str(out), "--size", "5")
    assert code == 2
    assert "not empty" in err and "--force" in err and str(out) in err and err.count("\n") == 1
    assert (out / "features" / "shard.parquet").read_bytes() == b"keep me"
    assert (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in out.iterdir()) == ["features", "notes.txt"]


def test_unwritable_output_is_refused(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("data")
    code, err = run_main(capsys, "--out", str(blocker / "sub"), "--size", "5")
    assert code == 2 and "not a folder" in err and err.count("\n") == 1
    code, err = run_main(capsys, "--out", str(blocker), "--size", "5", "--force")
    assert code == 2 and "not a folder" in err
    assert blocker.read_text() == "data"


def test_cli_prints_one_line_without_traceback(tmp_path):
    done = subprocess.run([sys.executable, "-m", "jobs.demo", "--out", str(tmp_path / "o"), "--size", "0"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "Traceback" not in done.stderr
    assert "--size" in done.stderr


def test_force_replaces_only_the_demos_own_files(tmp_path):
    out = tmp_path / "out"
    for name in ("features", "lancedb", "runs"):
        (out / name).mkdir(parents=True)
        (out / name / "x").write_text("old")
    (out / "demo.json").write_text("{}")
    (out / "mine.txt").write_text("keep")
    paths = prepare_output(out, force=True)
    assert paths.out == out
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]


def test_missing_config_or_weights_are_refused(tmp_path, capsys):
    with pytest.raises(InputError, match="no such config file"):
        DemoSettings(out=tmp_path, config=tmp_path / "nope.yaml").check()
    code, err = run_main(capsys, "--out", str(tmp_path / "o"), "--weights", str(tmp_path / "c3d.pickle"))
    assert code == 2 and "no such C3D weights file" in err and not (tmp_path / "o").exists()


def test_the_library_names_settings_and_the_command_line_names_flags(tmp_path, capsys):
    with pytest.raises(SettingError) as bad:
        DemoSettings(out=tmp_path / "o", min_duration_s=5.0, max_duration_s=4.0).check()
    assert str(bad.value) == "durations must satisfy 0 < min_duration_s <= max_duration_s"
    with pytest.raises(SettingError, match=r"^num_workers must be at least 1, not 0$"):
        DemoSettings(out=tmp_path / "o", num_workers=0).check()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(SettingError) as full:
        prepare_output(tmp_path / "full", force=False)
    assert "force replaces the demo's files" in str(full.value) and "--" not in str(full.value)
    code, err = run_main(capsys, "--out", str(tmp_path / "o"), "--min-duration", "5", "--max-duration", "4")
    assert code == 2 and "durations must satisfy 0 < --min-duration <= --max-duration" in err
    code, err = run_main(capsys, "--out", str(tmp_path / "o"), "--num-workers", "0")
    assert code == 2 and err.startswith("error: --num-workers must be at least 1, not 0")
    assert not (tmp_path / "o").exists()


def test_the_packages_load_their_names_on_first_use():
    code = ("import sys, moments.demo, moments.train; assert 'ray' not in sys.modules, 'ray imported';"
            " from moments.demo import DemoSettings, run_demo; from moments.train import EpochWatcher, RunStorage;"
            " import moments.demo as d, moments.train as t; assert all(getattr(d, n) for n in d.__all__);"
            " assert all(getattr(t, n) for n in t.__all__) and t.fit_distributed.__name__ == 'fit_distributed'")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


def test_the_epoch_watcher_reports_each_epoch_once_from_ray_trains_snapshots(tmp_path):
    from moments.train.progress import SNAPSHOT, EpochWatcher

    def snapshot(stage: int, epoch: int) -> None:
        folder = tmp_path / f"demo-stage{stage}"
        folder.mkdir(exist_ok=True)
        metrics = {"stage": stage, "epoch": epoch, "loss_total": 0.5, "val_R@1,IoU=0.5": 40.0, "pairs_per_s": 9.0}
        (folder / SNAPSHOT).write_text(json.dumps({"latest_checkpoint_result": {"metrics": metrics}}))

    seen: list[tuple[int, int]] = []
    watcher = EpochWatcher(tmp_path, "demo", lambda m: seen.append((m["stage"], m["epoch"])), every_s=60)
    snapshot(1, 1)
    watcher.poll()
    watcher.poll()
    snapshot(1, 2)
    snapshot(2, 1)
    (tmp_path / "other-stage1").mkdir()
    (tmp_path / "other-stage1" / SNAPSHOT).write_text("{}")  # another run: not ours
    (tmp_path / "demo-stage3").mkdir()
    (tmp_path / "demo-stage3" / SNAPSHOT).write_text("{half a fi")  # being written: skipped
    with watcher:
        pass
    assert seen == [(1, 1), (1, 2), (2, 1)]


def test_paraphrases_share_no_word_with_any_query():
    vocabulary = {"the", "a", "appears", "after", "vanishes", *COLORS, *SHAPES,
                  *(word for action in ACTIONS for word in action.split())}
    for colour in COLORS:
        for shape in SHAPES:
            for action in ACTIONS:
                text = paraphrase(f"the {colour} {shape} {action}")
                assert text is not None
                assert not set(text.split()) & vocabulary, text
    assert paraphrase("a red circle appears after the blue square vanishes") is None
    searches = steps.search_texts(["a red circle appears after the blue square vanishes", "the red circle grows"],
                                 vocabulary)
    assert [text for text, _ in searches] == ["the red circle grows", "red circle", "crimson disc expands"]
    assert searches[2][1].startswith("no word in any query")


@pytest.mark.slow
def test_demo_steps_end_to_end_on_a_tiny_library(tmp_path, ray_session):
    """Every step of the demo on 5 short videos; training runs in-process (Ray Train has its own tests)."""
    lines: list[str] = []
    settings = DemoSettings(out=tmp_path / "demo", size=5, min_duration_s=3.0, max_duration_s=4.0, fps=4.0,
                                 clip_stride=16, progress=False)
    settings.check()
    paths = prepare_output(settings.out, force=False)

    library = steps.generate_library(settings, paths)
    assert library["videos"] == 5 and len(list(paths.videos.glob("*.mp4"))) == 5

    extraction = steps.extract_features(settings, paths, echo=lines.append)
    assert extraction["done"] == 5 and extraction["failed"] == 0 and extraction["clips"] >= 5
    assert any("RANDOM weights" in line and "--weights c3d.pickle" in line for line in lines)

    overrides = ["train.stage1.epochs=1", "train.stage2.epochs=1", "train.stage3.epochs=1"]
    code = train_cli.main(["--config", str(settings.config), "--features", str(paths.features), "--annotations",
                           str(paths.annotations), "--out", str(tmp_path / "model"), "--quiet", "--threads", "2",
                           *sum((["--set", o] for o in overrides), [])])
    assert code == 0
    checkpoint = str(tmp_path / "model" / "best.pt")

    results = steps.evaluate_on_test(paths, checkpoint)
    names = list(results)
    assert names[0] == "DRN" and names[1].startswith("fixed window [") and names[2] == "whole video"
    test_lines = (paths.annotations / "test.jsonl").read_text().splitlines()
    assert {r["num_queries"] for r in results.values()} == {len(test_lines)}
    assert results["whole video"]["recall"]["R@1,IoU=0.3"] > 0  # the whole video overlaps every moment
    assert sorted(p.name for p in paths.eval.iterdir()) == ["drn_test.jsonl", "fixed_window_test.jsonl",
                                                           "whole_video_test.jsonl"]
    table = format_comparison(results)
    assert "DRN" in table and "whole video" in table and f"{len(test_lines)} test queries" in table

    texts = steps.query_collection(paths)
    expected = list(dict.fromkeys(json.loads(line)["query"] for line in test_lines))
    assert texts == expected and paths.queries.read_text().splitlines() == expected

    grounding = steps.ground_collection(paths, checkpoint, "tiny-run", echo=lines.append)
    assert grounding["videos"] == 5 and grounding["queries"] == len(texts)
    index = Index(paths.db)
    assert index.count(run_id="tiny-run") == grounding["rows"] > 0
    assert set(index.to_pandas(run_id="tiny-run").video_id) == {p.stem for p in paths.videos.glob("*.mp4")}

    searches = steps.search_texts(texts, steps.library_vocabulary(paths))
    found = steps.run_searches(paths, searches, k=3, echo=lines.append)
    assert len(found) == len(searches) >= 1
    for item in found:
        assert 1 <= len(item["results"]) <= 3
        assert {r["query_text"] for r in item["results"]} <= set(texts)
    assert any('search "' in line for line in lines)
    hits = steps.library_video_hits(paths, "tiny-run")
    assert hits["queries"] == len(texts) and 0 <= hits["at_1"] <= hits["at_5"] == len(texts)  # 5 videos: all in top 5
    assert str(paths.db) in where_things_are(paths)
