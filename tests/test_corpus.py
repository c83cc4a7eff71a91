"""Corpus-level evaluation: hand-worked cases, the conventions, and grounding a split as a corpus."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from drn.checkpoint import save_checkpoint
from drn.config import load_config
from drn.corpus import (
    CorpusConfig,
    RankedMoments,
    candidate_videos,
    check_corpus_split,
    corpus_queries,
    evaluate_corpus,
    format_corpus_result,
    ground_corpus,
)
from drn.datasets import load_split
from drn.datasets.synthetic import make_synthetic_benchmark
from drn.errors import InputError
from drn.inference import Grounder
from drn.model import new_model
from drn.pairs import GroundingPair
from drn.retrieval_training import train_retrieval
from drn.store import FeatureStore
from drn.text import OpenVocabulary
from drn.training import fit, stages_from_config
from drn.training_setup import prepare_training_data
from jobs.evaluate import main as evaluate_main

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "synthetic.yaml"
TINY = ["model.feature_dim=8", "model.num_segments=8", "model.lstm_hidden=8", "model.attention_dim=8",
        "model.location_dim=4", "model.level_channels=[8,8,16]", "model.fpn_channels=8", "model.iou_channels=[8,4]",
        "decode.top_per_level=4", "decode.top_n=3", "train.stage1.epochs=1", "model.retrieval_dim=8",
        "retrieval.epochs=1"]

PAIRS = [
    GroundingPair(0, "v1", "Person opens the door.", 0.0, 10.0, 40.0),
    GroundingPair(1, "v2", "person sits", 2.0, 4.0, 40.0),
    GroundingPair(2, "v3", "person opens the door", 5.0, 15.0, 40.0),
]


def hand_ranked() -> dict[str, RankedMoments]:
    return {
        "person opens the door": RankedMoments(["v2", "v3", "v1"],
                                               np.array([[0, 10, 0.9], [6, 15, 0.8], [30, 40, 0.7]], float)),
        "person sits": RankedMoments(["v2"], np.array([[2, 3, 0.5]], float)),
    }


def test_queries_are_distinct_normalised_texts_with_every_moment() -> None:
    queries = corpus_queries(PAIRS)
    assert [q.key for q in queries] == ["person opens the door", "person sits"]
    assert queries[0].text == "Person opens the door." and queries[0].videos == {"v1", "v3"}
    assert queries[0].moments == (("v1", 0.0, 10.0), ("v3", 5.0, 15.0))


def test_hand_worked_corpus_recall() -> None:
    result = evaluate_corpus(corpus_queries(PAIRS), hand_ranked(), num_videos=3)
    # door: rank 0 is v2 (no door there), rank 1 is v3 [6, 15] vs [5, 15]: IoU 0.9; sits: [2, 3] vs [2, 4]: IoU 0.5
    assert result.recall[(1, 0.5)] == 50.0 and result.recall[(1, 0.7)] == 0.0
    assert result.recall[(10, 0.5)] == 100.0 and result.recall[(10, 0.7)] == 50.0
    assert result.recall[(100, 0.7)] == 50.0
    assert result.video_recall == {1: 50.0, 10: 100.0}
    assert result.video_recall_chance[1] == pytest.approx(100 * (2 / 3 + 1 / 3) / 2)
    assert result.video_recall_chance[10] == 100.0
    assert result.num_queries == 2 and result.moments_per_query["max"] == 2
    strict = evaluate_corpus(corpus_queries(PAIRS), hand_ranked(), num_videos=3, config=CorpusConfig(comparison=">"))
    assert strict.recall[(1, 0.5)] == 0.0  # IoU exactly 0.5 is not > 0.5
    text = format_corpus_result(result)
    assert "convention:" in text and "same video" in text and "chance" in text


def test_a_hit_needs_the_moment_in_the_same_video() -> None:
    ranked = {"person sits": RankedMoments(["v1"], np.array([[2, 4, 0.9]], float)),  # right times, wrong video
              "person opens the door": RankedMoments(["v1"], np.array([[0, 10, 0.9]], float))}
    result = evaluate_corpus(corpus_queries(PAIRS), ranked, num_videos=3)
    assert result.recall[(1, 0.5)] == 50.0 and result.video_recall[1] == 50.0


def test_without_labels_there_is_no_relevance_and_p_at_n_is_kept() -> None:
    result = evaluate_corpus(corpus_queries(PAIRS), hand_ranked(), num_videos=3)
    assert result.relevance is None and "relevance" not in result.to_dict()
    assert CorpusConfig(recall_at=(1, 5), video_recall_at=(1,)).keep(3) == 10  # the first 10 results for P@10
    with pytest.raises(InputError, match="precision_at must be at least 1"):
        CorpusConfig(precision_at=0)


def test_missing_results_and_single_video_splits_are_clear_errors() -> None:
    with pytest.raises(InputError, match="1 of 2 query texts have no results"):
        evaluate_corpus(corpus_queries(PAIRS), {"person sits": hand_ranked()["person sits"]}, num_videos=3)
    with pytest.raises(InputError, match="the split has 1 video"):
        check_corpus_split([PAIRS[0]], "one.jsonl")


def test_ranking_breaks_ties_by_video_then_start() -> None:
    ranked = RankedMoments.rank(["b", "a", "a", "c"], np.array([[5, 6, .5], [3, 4, .5], [1, 2, .5], [0, 1, .9]]),
                                keep=3)
    assert ranked.video_ids == ["c", "a", "a"] and ranked.segments[1].tolist() == [1, 2, .5]
    assert ranked.video_order() == ["c", "a"]


def test_ground_corpus_ranks_every_video_against_every_text(tmp_path) -> None:
    torch.manual_seed(0)
    bench = make_synthetic_benchmark(tmp_path / "syn", num_videos=12, feature_dim=8, seed=2)
    from drn.datasets import load_split

    store = FeatureStore(bench.features)
    pairs = load_split("jsonl", bench.annotations, "train", durations=store.durations()).pairs
    config = load_config("configs/synthetic.yaml", ["model.feature_dim=8", "decode.top_n=3"])
    grounder = Grounder(new_model(config, OpenVocabulary()).eval(), config, OpenVocabulary())
    queries, ranked, predictions, videos = ground_corpus(grounder, store, pairs, videos_per_batch=4)
    assert videos == len({p.video_id for p in pairs}) and len(predictions) == len(pairs)
    # brute force: every text against every video in one call, then one global sort
    everything = grounder.ground([store.load(v) for v in sorted({p.video_id for p in pairs})],
                                 grounder.encode_queries([q.text for q in queries]))
    for q, query in enumerate(queries):
        rows = [r for r in everything if r.query_index == q]
        expected = RankedMoments.rank([r.video_id for r in rows for _ in r.segments],
                                      np.concatenate([r.segments[:, :3] for r in rows]), keep=100)
        assert ranked[query.key].video_ids == expected.video_ids
        np.testing.assert_allclose(ranked[query.key].segments, expected.segments, rtol=1e-5)
    result = evaluate_corpus(queries, ranked, videos)
    assert 0.0 <= result.recall[(1, 0.5)] <= result.recall[(10, 0.5)] <= result.recall[(100, 0.5)] <= 100.0


@pytest.fixture(scope="module")
def two_stage_checkpoints(tmp_path_factory) -> dict[str, str]:
    """A tiny DRN trained (stage 1) on a synthetic benchmark: with its retrieval stage trained (stage 4) and, as
    stage 1 left it, with an untrained one."""
    root = tmp_path_factory.mktemp("corpus-modes")
    bench = make_synthetic_benchmark(root / "syn", num_videos=16, feature_dim=8, seed=5)
    config = load_config(CONFIG, TINY)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        data = prepare_training_data(config, bench.features, bench.annotations, "jsonl")
        model = data.new_model()
        result = fit(model, data.vocab, config, data.loader("train"), data.loader("val"), data.val.pairs,
                     root / "train", stages_from_config(config, [1]))
        train_retrieval(model, data.loader("train"), data.train, data.val, config)
        save_checkpoint(root / "two_stage.pt", model, data.vocab, stage=4)
    finally:
        torch.set_num_threads(threads)
    return {"features": str(bench.features), "annotations": str(bench.annotations),
            "two_stage": str(root / "two_stage.pt"), "drn_only": str(result.best_checkpoint)}


def corpus_cli(paths: dict[str, str], checkpoint: str, *flags: str) -> list[str]:
    return ["--corpus", "--annotations", paths["annotations"], "--split", "train", "--checkpoint",
            paths[checkpoint], "--features", paths["features"], "--quiet", "--threads", "1", *flags]


def test_candidate_driven_corpus_equals_exhaustive_when_every_video_is_a_candidate(two_stage_checkpoints,
                                                                                    capsys) -> None:
    paths = two_stage_checkpoints
    videos = len({p.video_id for p in load_split("jsonl", paths["annotations"], "train").pairs})
    assert evaluate_main(corpus_cli(paths, "two_stage", "--exhaustive", "--json")) == 0
    exhaustive = json.loads(capsys.readouterr().out)
    assert evaluate_main(corpus_cli(paths, "two_stage", "--candidates", str(videos + 3), "--json")) == 0
    candidates = json.loads(capsys.readouterr().out)
    assert exhaustive["mode"] == "exhaustive" and exhaustive["candidates"] is None
    assert candidates["mode"] == "candidates" and candidates["candidates"] == videos + 3
    assert exhaustive["pairs_scored"] == candidates["pairs_scored"] == exhaustive["all_pairs"]
    for name in ("recall", "video_recall", "within_video", "num_queries", "num_videos"):
        assert candidates[name] == pytest.approx(exhaustive[name]), name

    # the default with a trained retrieval stage: 20 candidates (here every video), said in the printed result
    assert evaluate_main(corpus_cli(paths, "two_stage")) == 0
    printed = capsys.readouterr().out
    assert "mode: candidates, each text's 20 best videos" in printed
    # a few candidates: fewer pairs, every text still answered, the within-video R@1 unchanged
    assert evaluate_main(corpus_cli(paths, "two_stage", "--candidates", "2", "--json")) == 0
    few = json.loads(capsys.readouterr().out)
    queries = exhaustive["num_queries"]
    assert few["pairs_scored"] <= queries * 2 + few["own_video_pairs"] < exhaustive["all_pairs"]
    assert few["within_video"] == exhaustive["within_video"]


def test_candidates_are_each_texts_best_videos_by_their_best_cell(two_stage_checkpoints) -> None:
    paths = two_stage_checkpoints
    grounder = Grounder.from_checkpoint(paths["two_stage"])
    store = FeatureStore(paths["features"])
    videos = sorted(store.ok_video_ids())
    encoded = grounder.encode_queries(["the red ball", "a blue square moves", "green"])
    chosen = candidate_videos(grounder, store, videos, encoded, 4, videos_per_batch=3)
    head = grounder.model.retrieval
    with torch.no_grad():
        grids = torch.as_tensor(grounder.grids([store.load(v) for v in videos])[0], dtype=torch.float32)
        best = torch.einsum("qr,vcr->qvc", head.encode_query(encoded.features), head.encode_cells(grids)).amax(-1)
    for q, row in enumerate(best.numpy()):
        order = sorted(range(len(videos)), key=lambda v, row=row: (-row[v], videos[v]))[:4]
        assert chosen[q] == [videos[v] for v in order]


def test_bad_candidate_settings_are_one_line_errors(two_stage_checkpoints, capsys) -> None:
    paths = two_stage_checkpoints
    for flags, message in ((("--candidates", "0"), "--candidates must be at least 1, not 0"),
                           (("--candidates", "-3"), "--candidates must be at least 1, not -3"),
                           (("--candidates", "2", "--exhaustive"), "exclude each other")):
        assert evaluate_main(corpus_cli(paths, "two_stage", *flags)) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    # stage 1 only: the retrieval stage never trained, so candidates are refused and the default is exhaustive
    assert evaluate_main(corpus_cli(paths, "drn_only", "--candidates", "5")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "retrieval stage was never trained" in err[0], err
    assert evaluate_main(corpus_cli(paths, "drn_only", "--json")) == 0
    assert json.loads(capsys.readouterr().out)["mode"] == "exhaustive"
    with pytest.raises(InputError, match="at least 1"):
        ground_corpus(Grounder.from_checkpoint(paths["two_stage"]), FeatureStore(paths["features"]),
                      load_split("jsonl", paths["annotations"], "train").pairs, candidates=0)
