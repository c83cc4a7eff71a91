"""DRN shapes, size (about 39 M parameters at D = 4096), switches, and the video/query/pair split."""

from __future__ import annotations

import math

import pytest
import torch

from drn.config import DRNConfig, load_config
from drn.errors import InputError
from drn.model import DRN, count_parameters, level_points


def small_config(**model) -> DRNConfig:
    config = load_config(None, [
        "model.feature_dim=24", "model.num_segments=16", "model.lstm_hidden=16", "model.attention_dim=16",
        "model.location_dim=8", "model.level_channels=[16,16,32]", "model.fpn_channels=16",
        "model.iou_channels=[16,8]",
    ] + [f"model.{k}={v}" for k, v in model.items()])
    return config


def inputs(batch: int, t: int, d: int, vocab: int = 20):
    torch.manual_seed(0)
    words = torch.randint(2, vocab, (batch, 6))
    mask = torch.ones_like(words, dtype=torch.bool)
    mask[0, 3:] = False
    words[0, 3:] = 0
    return torch.randn(batch, t, d), words, mask


def test_parameter_count_at_d4096_is_near_39m() -> None:
    model = DRN(DRNConfig(), torch.randn(50, 300))  # GloVe 300-d, the paper's setting
    count = count_parameters(model)
    print(f"DRN parameters at D=4096, GloVe 300-d: {count:,} (Linear(D->D): {4096 * 4097:,})")
    assert abs(count - 39_000_000) < 1_000_000
    assert count_parameters(model.fusion.video_proj) == 4096 * 4097


@pytest.mark.parametrize("t", [32, 64])
def test_forward_shapes_at_d4096(t: int) -> None:
    config = load_config(None, [f"model.num_segments={t}"])
    model = DRN(config, torch.randn(30, 384)).eval()
    video, words, mask = inputs(2, t, 4096, 30)
    with torch.no_grad():
        out = model(video, words, mask)
    assert [m.shape for m in out.match_logits] == [(2, t), (2, t // 2), (2, t // 4)]
    assert [d.shape for d in out.distances] == [(2, t, 2), (2, t // 2, 2), (2, t // 4, 2)]
    assert [u.shape for u in out.iou_logits] == [(2, t), (2, t // 2), (2, t // 4)]
    flat = out.flat()
    assert flat.match_logits.shape == (2, t + t // 2 + t // 4)
    assert bool((flat.distances > 0).all())


def test_points_sit_at_the_centre_of_each_stride() -> None:
    points = level_points(16)
    assert points[0][:3].tolist() == [0.5, 1.5, 2.5]
    assert points[1][:3].tolist() == [1.0, 3.0, 5.0]
    assert points[2].tolist() == [2.0, 6.0, 10.0, 14.0]


def test_match_bias_starts_at_the_prior_and_word_vectors_are_not_trained() -> None:
    model = DRN(small_config(), torch.randn(20, 10))
    assert torch.sigmoid(model.head.match_out.bias).item() == pytest.approx(0.01)
    assert "query_encoder.word_vectors" in model.state_dict()
    assert all(p.data_ptr() != model.query_encoder.word_vectors.data_ptr() for p in model.parameters())


def test_video_side_and_query_side_compose_to_forward() -> None:
    config = small_config()
    model = DRN(config, torch.randn(20, 10)).eval()
    video, words, mask = inputs(3, 16, 24)
    with torch.no_grad():
        whole = model(video, words, mask).flat()
        v, q = model.encode_video(video), model.encode_query(words, mask)
        parts = model.decode_pairs(v, q).flat()
    torch.testing.assert_close(whole.match_logits, parts.match_logits)
    torch.testing.assert_close(whole.distances, parts.distances)


def test_padding_does_not_change_a_query() -> None:
    model = DRN(small_config(), torch.randn(20, 10)).eval()
    short = torch.tensor([[5, 6, 7]])
    padded = torch.tensor([[5, 6, 7, 0, 0]])
    with torch.no_grad():
        a = model.encode_query(short, short != 0)
        b = model.encode_query(padded, padded != 0)
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("switch", [
    {"use_location_embedding": "false"}, {"multi_level_fusion": "false"}, {"same_query_all_levels": "true"},
    {"quality": "none"}, {"quality": "centerness"},
])
def test_ablation_switches_build_and_run(switch) -> None:
    config = small_config(**switch)
    model = DRN(config, torch.randn(20, 10)).eval()
    video, words, mask = inputs(2, 16, 24)
    out = model(video, words, mask).flat()
    assert out.match_logits.shape == (2, 28)
    assert (out.iou_logits is None) == (config.model.quality == "none")
    full = count_parameters(DRN(small_config(), torch.randn(20, 10)))
    assert count_parameters(model) != full or config.model.quality == "centerness"


def test_wrong_grid_shape_is_an_input_error() -> None:
    model = DRN(small_config(), torch.randn(20, 10))
    video, words, mask = inputs(1, 16, 24)
    with pytest.raises(InputError, match=r"model expects \(V, 16, 24\)"):
        model(torch.randn(1, 16, 25), words, mask)


@pytest.mark.parametrize("preset,t", [("charades_sta", 32), ("activitynet", 64), ("tacos", 128), ("synthetic", 16)])
def test_presets_load(preset: str, t: int) -> None:
    config = load_config(f"configs/{preset}.yaml")
    assert config.model.num_segments == t
    assert config.model.feature_dim == (64 if preset == "synthetic" else 4096)
    assert math.isinf(config.targets.level_ranges[2][1])


def test_overrides_and_unknown_keys() -> None:
    config = load_config("configs/charades_sta.yaml", ["train.stage1.lr=0.01", "targets.positives=center"])
    assert config.train.stage1.lr == 0.01 and config.targets.positives == "center"
    with pytest.raises(InputError, match="unknown config key 'train.stage1.momentum'"):
        load_config("configs/charades_sta.yaml", ["train.stage1.momentum=0.9"])
    with pytest.raises(InputError, match="targets.positives must be one of"):
        load_config(None, ["targets.positives=most"])
    with pytest.raises(InputError, match="must look like key=value"):
        load_config(None, ["model.quality"])


def test_grounders_sharing_a_model_encode_queries_from_many_threads() -> None:
    """A live search makes a Grounder around the service's model while other searches run it (LibraryScorer):
    making one must not rebuild the model's LSTM weights under a running forward pass (issue 20: HTTP 500s at
    32 concurrent live searches)."""
    from concurrent.futures import ThreadPoolExecutor

    from drn.inference import Grounder
    from drn.model import new_model
    from drn.text.vocabulary import OpenVocabulary

    config = load_config("configs/synthetic.yaml", ["model.feature_dim=8"])
    torch.manual_seed(0)
    shared = Grounder(new_model(config, OpenVocabulary()).train(), config, OpenVocabulary())
    assert not shared.model.training
    texts = ["a person opens the door of the red car", "someone sits down"]
    serial = shared.encode_queries(texts).features

    def encoded(_: int) -> torch.Tensor:
        return Grounder(shared.model, config, shared.vocab).encode_queries(texts).features

    with ThreadPoolExecutor(max_workers=8) as pool:
        at_once = list(pool.map(encoded, range(800)))
    assert all(Grounder(shared.model, config, shared.vocab).model is shared.model for _ in range(2))
    for features in at_once:
        torch.testing.assert_close(features, serial)
