"""``python -m jobs.evaluate --checkpoint``: a real tiny model trained here, scored through the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from drn.config import load_config
from drn.datasets import load_split
from drn.datasets.synthetic import make_synthetic_benchmark
from drn.errors import InputError
from drn.evaluation import EvalConfig, evaluate
from drn.inference import predict_pairs
from drn.predictions import read_predictions
from drn.training import fit, stages_from_config
from drn.training_setup import prepare_training_data
from jobs.evaluate import main as evaluate_main

REPO_ROOT = Path(__file__).resolve().parents[1]
DIM = 16


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """A synthetic benchmark and a checkpoint trained on it for one short epoch (a few seconds)."""
    root = tmp_path_factory.mktemp("evalckpt")
    bench = make_synthetic_benchmark(root / "syn", num_videos=40, feature_dim=DIM, seed=3)
    config = load_config(REPO_ROOT / "configs/synthetic.yaml", [f"model.feature_dim={DIM}", "train.stage1.epochs=2"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        data = prepare_training_data(config, bench.features, bench.annotations)
        model = data.new_model()
        result = fit(model, data.vocab, config, data.loader("train"), data.loader("val"), data.val.pairs,
                     root / "model", stages_from_config(config, [1]))
    finally:
        torch.set_num_threads(threads)
    return {"features": Path(bench.features), "annotations": Path(bench.annotations),
            "checkpoint": Path(result.best_checkpoint), "root": root}


def run_cli(*args: object) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "jobs.evaluate", *map(str, args)], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def run_checkpoint_cli(trained, out: Path, top_n: int) -> subprocess.CompletedProcess:
    """``jobs.evaluate --checkpoint`` on the test split as JSON, writing the predictions to ``out``."""
    return run_cli("--dataset", "jsonl", "--annotations", trained["annotations"], "--split", "test",
                   "--checkpoint", trained["checkpoint"], "--features", trained["features"],
                   "--predictions-out", out, "--top-n", top_n, "--json", "--quiet", "--threads", 1)


def test_checkpoint_metrics_equal_the_evaluator_on_the_written_predictions(trained) -> None:
    out = trained["root"] / "preds.jsonl"
    proc = run_checkpoint_cli(trained, out, top_n=3)
    assert proc.returncode == 0, proc.stderr
    printed = json.loads(proc.stdout)
    pairs = load_split("jsonl", trained["annotations"], "test").pairs
    predictions = read_predictions(out)
    assert len(predictions) == len(pairs) > 10
    assert all(1 <= len(p.segments) <= 3 for p in predictions.values())
    expected = evaluate(pairs, predictions, EvalConfig()).to_dict()
    assert printed["recall"] == expected["recall"]
    assert printed["miou"] == expected["miou"]
    assert printed["num_queries"] == len(pairs)
    assert printed["pairs_without_features"] == 0
    # the trained model is not a constant: its top-1 segments differ across queries
    assert len({tuple(p.segments[0, :2].round(3)) for p in predictions.values()}) > 1

    # the same file scored through --predictions gives the same numbers
    again = run_cli("--dataset", "jsonl", "--annotations", trained["annotations"], "--split", "test",
                    "--predictions", out, "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["recall"] == printed["recall"]


def test_a_store_of_another_feature_dimension_is_a_one_line_error(trained) -> None:
    other = make_synthetic_benchmark(trained["root"] / "other", num_videos=10, feature_dim=DIM // 2, seed=4)
    proc = run_cli("--dataset", "jsonl", "--annotations", other.annotations, "--split", "test",
                   "--checkpoint", trained["checkpoint"], "--features", other.features, "--quiet")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    message = proc.stderr.strip()
    assert len(message.splitlines()) == 1
    assert f"features are {DIM // 2}-d but the model expects {DIM}-d" in message
    assert other.features in message


def write_split_with_an_unknown_video(trained, folder: Path) -> int:
    """A copy of the test split plus one pair whose video is not in the store; returns the original count."""
    folder.mkdir(exist_ok=True)
    lines = (trained["annotations"] / "test.jsonl").read_text().splitlines()
    ghost = {"qid": len(lines), "video_id": "no_such_video", "query": "the red event", "start_s": 1.0,
             "end_s": 4.0, "duration_s": 20.0}
    (folder / "test.jsonl").write_text("\n".join([*lines, json.dumps(ghost)]) + "\n")
    (folder / "train.jsonl").write_text((trained["annotations"] / "train.jsonl").read_text())
    return len(lines)


def test_pairs_without_features_are_an_error_or_skipped_or_misses_with_a_count(trained, capsys) -> None:
    folder = trained["root"] / "ghost"
    count = write_split_with_an_unknown_video(trained, folder)
    base = ["--dataset", "jsonl", "--annotations", str(folder), "--split", "test", "--checkpoint",
            str(trained["checkpoint"]), "--features", str(trained["features"]), "--json", "--quiet"]

    assert evaluate_main(base) == 2
    err = capsys.readouterr().err
    assert "1 of" in err and "no_such_video" in err and "--missing-videos" in err

    assert evaluate_main([*base, "--missing-videos", "skip"]) == 0
    skipped = json.loads(capsys.readouterr().out)
    assert skipped["pairs_without_features"] == 1
    assert skipped["num_queries"] == count

    assert evaluate_main([*base, "--missing-videos", "miss"]) == 0
    missed = json.loads(capsys.readouterr().out)
    assert missed["num_queries"] == count + 1 and missed["num_missing"] == 1
    # one more query, scored as a miss: each recall shrinks by the factor count / (count + 1)
    for key, value in skipped["recall"].items():
        assert missed["recall"][key] == pytest.approx(value * count / (count + 1), abs=1e-3)


def test_the_library_call_predicts_what_the_command_line_writes_and_names_its_parameters(trained, capsys) -> None:
    out = trained["root"] / "preds-lib.jsonl"
    proc = run_checkpoint_cli(trained, out, top_n=2)
    assert proc.returncode == 0, proc.stderr
    written = read_predictions(out)
    pairs = load_split("jsonl", trained["annotations"], "test").pairs
    run = predict_pairs(trained["checkpoint"], trained["features"], pairs, top_n=2)
    assert [p.qid for p in run.predictions] == [p.qid for p in pairs] == list(written)
    assert len(run.scored) == len(pairs) and run.without_features == []
    for prediction in run.predictions:
        assert prediction.video_id == written[prediction.qid].video_id
        np.testing.assert_allclose(prediction.segments, written[prediction.qid].segments, atol=1e-5)

    with pytest.raises(InputError, match="^top_n must be at least 1, got 0$"):
        predict_pairs(trained["checkpoint"], trained["features"], pairs, top_n=0)
    with pytest.raises(InputError, match="^batch_size must be at least 1"):
        predict_pairs(trained["checkpoint"], trained["features"], pairs, batch_size=0)
    base = ["--dataset", "jsonl", "--annotations", str(trained["annotations"]), "--split", "test", "--checkpoint",
            str(trained["checkpoint"]), "--features", str(trained["features"]), "--quiet"]
    assert evaluate_main([*base, "--top-n", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --top-n must be at least 1, got 0"
    folder = trained["root"] / "ghost-lib"
    write_split_with_an_unknown_video(trained, folder)
    with_ghost = load_split("jsonl", folder, "test").pairs
    with pytest.raises(InputError, match="1 of .*no_such_video.*; use missing_videos skip or miss") as missing:
        predict_pairs(trained["checkpoint"], trained["features"], with_ghost)
    assert "--missing-videos" not in str(missing.value)  # the library names its parameter, the job its flag
    skipped = predict_pairs(trained["checkpoint"], trained["features"], with_ghost, missing_videos="skip")
    assert [p.video_id for p in skipped.without_features] == ["no_such_video"]
    assert len(skipped.predictions) == len(skipped.scored) == len(pairs)


def test_checkpoint_mode_needs_features_and_predictions_mode_refuses_checkpoint_options(trained, capsys) -> None:
    args = ["--dataset", "jsonl", "--annotations", str(trained["annotations"]), "--split", "test"]
    assert evaluate_main([*args, "--checkpoint", str(trained["checkpoint"])]) == 2
    assert "--features" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        evaluate_main([*args, "--predictions", "x.jsonl", "--top-n", "3"])
    assert exc.value.code == 2
    assert "--top-n only apply with --checkpoint" in capsys.readouterr().err


def test_the_dataset_comes_from_the_checkpoint_and_an_explicit_other_one_is_an_error(trained, capsys) -> None:
    base = ["--annotations", str(trained["annotations"]), "--split", "test", "--checkpoint",
            str(trained["checkpoint"]), "--features", str(trained["features"]), "--json", "--quiet"]
    assert evaluate_main(base) == 0  # no --dataset: the checkpoint was trained on jsonl
    taken = json.loads(capsys.readouterr().out)
    assert taken["dataset"] == "jsonl" and taken["num_queries"] > 10
    assert evaluate_main([*base, "--dataset", "jsonl"]) == 0  # explicit and agreeing: the same result
    assert json.loads(capsys.readouterr().out)["recall"] == taken["recall"]

    assert evaluate_main([*base, "--dataset", "charades_sta"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "--dataset charades_sta disagrees with the checkpoint, which was trained on jsonl" in err[0]
    assert evaluate_main(["--annotations", str(trained["annotations"]), "--predictions", "x.jsonl"]) == 2
    assert "--dataset is required with --predictions" in capsys.readouterr().err
