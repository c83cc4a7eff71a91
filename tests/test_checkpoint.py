"""Checkpoint round trip, mismatches (config, feature dimension), and the batched Grounder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from drn.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from drn.config import load_config
from drn.datasets.synthetic import make_synthetic_benchmark
from drn.decoding import decode_segments
from drn.errors import InputError
from drn.inference import Grounder
from drn.model import DRN, new_model
from drn.store import FeatureStore, StoreMetadata, VideoFeatures
from drn.text import OpenVocabulary, Vocabulary, is_unknown

SMALL = [
    "model.feature_dim=16", "model.num_segments=8", "model.lstm_hidden=8", "model.attention_dim=8",
    "model.location_dim=4", "model.level_channels=[8,8,16]", "model.fpn_channels=8", "model.iou_channels=[8,4]",
    "text.max_words=8", "text.open_vocabulary=false",
]
VOCAB = Vocabulary(["<pad>", "<unk>", "the", "red", "blue", "event", "after", "before"])


@pytest.fixture()
def saved(tmp_path):
    torch.manual_seed(0)
    config = load_config(None, SMALL)
    model = DRN(config, torch.randn(len(VOCAB), 5)).eval()
    path = tmp_path / "ckpt" / "model.pt"
    save_checkpoint(path, model, VOCAB, stage=2, metrics={"val": {"R@1,IoU=0.5": 12.5}})
    return path, model, config


def test_round_trip_gives_a_ready_identical_model(saved) -> None:
    path, model, config = saved
    loaded, loaded_config, vocab = load_checkpoint(path)
    assert vocab.tokens == VOCAB.tokens and loaded_config.to_dict() == config.to_dict()
    assert not loaded.training
    payload = read_checkpoint(path)
    assert payload["stage"] == 2 and payload["metrics"]["val"]["R@1,IoU=0.5"] == 12.5
    by_uri = read_checkpoint(Path(path).resolve().as_uri())  # file:// goes the object-store way
    assert by_uri["vocabulary"] == payload["vocabulary"] == VOCAB.record()
    assert by_uri["state_dict"].keys() == payload["state_dict"].keys()
    video, words = torch.randn(2, 8, 16), torch.tensor([[2, 3, 5], [2, 4, 0]])
    with torch.no_grad():
        a = model(video, words, words != 0).flat()
        b = loaded(video, words, words != 0).flat()
    torch.testing.assert_close(a.match_logits, b.match_logits)
    torch.testing.assert_close(a.iou_logits, b.iou_logits)


def test_open_vocabulary_checkpoints_carry_no_word_table_and_know_every_word(tmp_path) -> None:
    torch.manual_seed(0)
    config = load_config(None, [item for item in SMALL if "open_vocabulary" not in item])
    vocab = OpenVocabulary()
    model = new_model(config, vocab).eval()
    path = tmp_path / "open.pt"
    save_checkpoint(path, model, vocab, stage=1)
    payload = read_checkpoint(path)
    assert "query_encoder.word_vectors" not in payload["state_dict"]
    assert payload["vocabulary"] == vocab.record() and path.stat().st_size < 2_000_000  # the table is 47 MB
    grounder = Grounder.from_checkpoint(path)
    assert grounder.vocab.open and grounder.config.text.open_vocabulary
    words, mask = grounder.tokenize(["a crimson pyramid slides leftward"])  # no training vocabulary at all
    assert not any(is_unknown(grounder.vocab, tuple(w[w > 0].tolist())) for w in words[0][mask[0]])
    video = torch.randn(1, 8, 16)
    with torch.no_grad():
        a = model(video, words, mask).flat()
        b = grounder.model(video, words, mask).flat()
    torch.testing.assert_close(a.match_logits, b.match_logits)
    with pytest.raises(InputError, match="cannot spell none of the words|cannot spell"):
        grounder.encode_queries(["ᚠᚢᚦ ᚱᚲ"])
    kept = tmp_path / "kept.pt"  # a model built with the table as a kept buffer still saves without it
    save_checkpoint(kept, DRN(config, vocab.matrix), vocab, stage=1)
    assert "query_encoder.word_vectors" not in read_checkpoint(kept)["state_dict"]
    assert load_checkpoint(kept)[2].open


def test_version_1_checkpoints_load_with_their_closed_vocabulary(saved, tmp_path) -> None:
    path, model, _ = saved
    payload = read_checkpoint(path)
    old = {k: v for k, v in payload.items() if k not in ("vocabulary", "training")}
    old.update(version=1, vocab=list(VOCAB.tokens))
    old["config"]["train"].pop("negatives")
    old_path = tmp_path / "v1.pt"
    torch.save(old, old_path)
    loaded, config, vocab = load_checkpoint(old_path)
    assert vocab.tokens == VOCAB.tokens and not vocab.open
    assert config.train.negatives.per_positive == 0  # version 1 never trained with negative pairs
    words = torch.tensor([[2, 3, 5]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(torch.zeros(1, 8, 16), words, words != 0).flat().match_logits,
                                   model(torch.zeros(1, 8, 16), words, words != 0).flat().match_logits)


def test_checkpoint_from_another_config_is_a_clear_error(saved) -> None:
    path, _, _ = saved
    other = load_config(None, [*SMALL, "model.num_segments=16", "model.quality=none"])
    with pytest.raises(InputError, match=r"another model config: .*model.num_segments: 8 vs 16"):
        load_checkpoint(path, expected=other)
    payload = torch.load(path, weights_only=True)
    payload["config"]["model"]["fpn_channels"] = 12  # weights no longer fit their own config
    torch.save(payload, path)
    with pytest.raises(InputError, match="weights do not fit its config"):
        load_checkpoint(path)


def test_not_a_checkpoint(tmp_path) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="junk.pt: not a readable checkpoint"):
        load_checkpoint(junk)
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(InputError, match="not a DRN checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(InputError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_grounder_batches_match_per_pair_forward(saved) -> None:
    path, model, config = saved
    grounder = Grounder.from_checkpoint(path)
    queries = grounder.encode_queries(["the red event", "the blue event after the red event", "the zebra"])
    rng = np.random.default_rng(0)
    videos = [VideoFeatures(f"v{i}", rng.normal(size=(n, 16)).astype(np.float32), np.arange(n) * 1.0,
                            np.arange(n) + 1.0, float(n)) for i, n in enumerate((5, 12))]
    results = grounder.ground(videos, queries, pair_batch_size=4)
    assert [(r.query_index, r.video_id) for r in results] == [(q, v) for q in range(3) for v in ("v0", "v1")]
    words, mask = grounder.tokenize(queries.texts)
    grids = torch.as_tensor(grounder.grids(videos)[0])
    with torch.no_grad():
        for r in results:
            out = model(grids[[int(r.video_id[1])]], words[[r.query_index]], mask[[r.query_index]]).flat()
            duration = videos[int(r.video_id[1])].duration_s
            expected = decode_segments(out, [duration], 8, config.decode)[0]
            np.testing.assert_allclose(r.segments, expected, rtol=1e-4, atol=1e-5)
            assert r.segments.shape[1] == 5 and (r.segments[:, 1] <= duration + 1e-6).all()


def test_grounder_bad_input(saved, tmp_path) -> None:
    path, _, _ = saved
    grounder = Grounder.from_checkpoint(path)
    with pytest.raises(InputError, match="query 1: the query has 10 words, more than the encoder's limit of 8"):
        grounder.encode_queries(["the red event", "the red event after the blue event before the end"])
    with pytest.raises(InputError, match="query 0: the query '' is empty"):
        grounder.encode_queries([""])
    queries = grounder.encode_queries(["red"])
    nan = np.ones((4, 16), dtype=np.float32)
    nan[1, 3] = np.nan
    with pytest.raises(InputError, match="video 'broken' has NaN or infinite features"):
        grounder.ground([VideoFeatures("broken", nan, np.arange(4.0), np.arange(4.0) + 1, 4.0)], queries)
    wide = VideoFeatures("wide", np.ones((4, 32), np.float32), np.arange(4.0), np.arange(4.0) + 1, 4.0)
    with pytest.raises(InputError, match="features are 32-d but the model expects 16-d"):
        grounder.ground([wide], queries)
    bench = make_synthetic_benchmark(tmp_path / "syn", num_videos=2, feature_dim=24)
    store = FeatureStore(bench.features)
    assert isinstance(store.metadata, StoreMetadata)
    with pytest.raises(InputError, match="features are 24-d but the model expects 16-d"):
        grounder.check_features(store.metadata.feature_dim, bench.features)
