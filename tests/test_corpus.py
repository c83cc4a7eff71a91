"""Corpus-level evaluation: hand-worked cases, the conventions, and grounding a split as a corpus."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from drn.config import load_config
from drn.corpus import (
    CorpusConfig,
    RankedMoments,
    check_corpus_split,
    corpus_queries,
    evaluate_corpus,
    format_corpus_result,
    ground_corpus,
)
from drn.datasets.synthetic import make_synthetic_benchmark
from drn.errors import InputError
from drn.inference import Grounder
from drn.model import new_model
from drn.pairs import GroundingPair
from drn.store import FeatureStore
from drn.text import OpenVocabulary

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
