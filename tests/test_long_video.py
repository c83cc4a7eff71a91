"""A 30-minute video is grounded in windows as precisely as a 40-second one (a tiny DRN trained here on short ones).

The training videos (20 to 60 s, one 1-s clip every 0.5 s) hold a green and a red event, each a feature signature
added to background noise; the queries are "the green event" and "the red event". The long video is background
with red distractors and one 12-s green event near its end.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from drn.checkpoint import save_checkpoint
from drn.config import load_config
from drn.grid import pool_to_grid
from drn.model import DRN
from drn.nms import temporal_iou
from drn.store import FeatureStoreWriter, StoreMetadata, VideoFeatures, VideoRecord
from drn.text import Vocabulary
from drn.training import Stage, configure_stage, make_optimizer, run_epoch
from moments.library import WindowOptions, ground_every_video
from moments.library.windows import window_rule

TINY = ["name=long-video-test", "model.feature_dim=16", "model.num_segments=16", "model.lstm_hidden=8",
        "model.attention_dim=8", "model.location_dim=4", "model.level_channels=[16,16,32]", "model.fpn_channels=16",
        "text.max_words=4", "model.quality=none"]
VOCAB = Vocabulary(["<pad>", "<unk>", "the", "green", "red", "event"])
GREEN, RED = 0, 1
CLIP_STEP_S = 0.5


class Library:
    """Clip features with coloured events: background noise plus a colour's signature inside each event."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        signatures = self.rng.normal(size=(2, 16))
        self.signatures = (signatures / np.linalg.norm(signatures, axis=1, keepdims=True) * 3.0).astype(np.float32)

    def video(self, video_id: str, duration: float, events: list[tuple[int, float, float]]) -> VideoFeatures:
        starts = np.arange(0.0, duration - 1.0 + 1e-9, CLIP_STEP_S)
        centres = starts + 0.5
        features = self.rng.normal(0.0, 0.5, size=(len(starts), 16)).astype(np.float32)
        for colour, start, end in events:
            features[(centres >= start) & (centres < end)] += self.signatures[colour]
        return VideoFeatures(video_id, features, starts, starts + 1.0, duration)

    def training_video(self, number: int) -> tuple[VideoFeatures, list[tuple[int, float, float]]]:
        duration = float(self.rng.uniform(20.0, 60.0))
        lengths = self.rng.uniform(0.08, 0.35, 2) * duration
        gaps = self.rng.dirichlet(np.ones(3)) * (duration - lengths.sum())
        first = gaps[0]
        second = first + lengths[0] + gaps[1]
        colours = self.rng.permutation(2)
        events = [(int(colours[0]), first, first + lengths[0]), (int(colours[1]), second, second + lengths[1])]
        return self.video(f"train{number}", duration, events), events


def words(colour: int) -> list[int]:
    return [VOCAB.index["the"], VOCAB.index["green" if colour == GREEN else "red"], VOCAB.index["event"]]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """Train DRN stage 1 on 256 short videos (about 10-30 s on two cores) and save it as a checkpoint."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is faster, and far faster on a busy machine
    try:
        torch.manual_seed(0)
        library = Library(seed=0)
        config = load_config(None, TINY)
        items, durations = [], []
        for n in range(256):
            video, events = library.training_video(n)
            grid = torch.from_numpy(pool_to_grid(video, 16))
            durations.append(video.duration_s)
            for colour, start, end in events:
                gt = np.array([start, end]) / video.duration_s * 16
                items.append((grid, words(colour), torch.tensor(gt, dtype=torch.float32)))
        model = DRN(config, torch.randn(len(VOCAB), 8))
        stage = Stage(1, "all", ("location", "matching"), 3e-3, 1)
        optimizer = make_optimizer(configure_stage(model, stage), stage)
        order = torch.Generator().manual_seed(0)
        for _ in range(14):
            perm = torch.randperm(len(items), generator=order).tolist()
            batches = [{
                "video": torch.stack([items[i][0] for i in perm[b:b + 32]]),
                "words": torch.tensor([items[i][1] for i in perm[b:b + 32]]),
                "word_mask": torch.ones(len(perm[b:b + 32]), 3, dtype=torch.bool),
                "gt": torch.stack([items[i][2] for i in perm[b:b + 32]]),
            } for b in range(0, len(perm), 32)]
            run_epoch(model, batches, optimizer, stage, config)
        model.eval()
        root = tmp_path_factory.mktemp("long")
        metrics = {"train_duration_s": {"median": float(np.median(durations)),
                                        "p95": float(np.percentile(durations, 95))}}
        save_checkpoint(root / "tiny.pt", model, VOCAB, stage=1, metrics=metrics)
    finally:
        torch.set_num_threads(threads)
    return {"root": root, "checkpoint": str(root / "tiny.pt"), "library": library, "config": config,
            "metrics": metrics}


def write_store(path, videos: list[VideoFeatures]) -> str:
    meta = StoreMetadata("synthetic", "signature", "none", clip_len=2, clip_stride=1, fps="2", feature_dim=16,
                         dtype="float32")
    with FeatureStoreWriter(path, meta) as writer:
        for video in videos:
            writer.add_clips(video.video_id, video.features, video.clip_start_s, video.clip_end_s)
            writer.finish_video(VideoRecord(video.video_id, f"synthetic://{video.video_id}",
                                            duration_s=video.duration_s, num_clips=video.num_clips))
    return str(path)


def best_iou(results, video_id: str, truth: tuple[float, float]) -> float:
    rows = results.filter(np.array(results.column("video_id").to_pylist()) == video_id).to_pylist()
    best = min(rows, key=lambda r: r["rank"])
    return float(temporal_iou(np.array(truth), np.array([[best["start_s"], best["end_s"]]]))[0])


@pytest.mark.slow
def test_a_30_minute_video_is_grounded_as_precisely_as_a_short_one(trained) -> None:
    library: Library = trained["library"]
    green_long = (1690.0, 1702.0)
    distractors = [(RED, 300.0, 310.0), (RED, 905.0, 917.0), (RED, 1500.0, 1508.0), (RED, 1720.0, 1731.0)]
    long = library.video("long", 1800.0, [*distractors, (GREEN, *green_long)])
    green_short = (25.0, 33.0)
    short = library.video("short", 40.0, [(RED, 5.0, 12.0), (GREEN, *green_short)])
    store = write_store(trained["root"] / "features", [long, short])

    rule = window_rule(trained["config"], trained["metrics"])
    assert rule.source == "checkpoint training durations" and 35.0 < rule.window_s < 45.0
    assert len(rule.spans(1800.0)) > 80 and rule.spans(40.0) == [(0.0, 40.0)]

    results = ground_every_video("the green event", trained["checkpoint"], store, k=10, top_k=3)
    short_iou, long_iou = best_iou(results, "short", green_short), best_iou(results, "long", green_long)
    print(f"\nIoU of the best segment: 40-s video {short_iou:.2f}, 30-min video in windows {long_iou:.2f}")
    assert short_iou >= 0.5
    assert long_iou >= 0.5

    whole = ground_every_video("the green event", trained["checkpoint"], store, k=10, top_k=3,
                        windows=WindowOptions(max_whole_s=4000.0))  # no windows: one grid cell is 112 s
    whole_iou = best_iou(whole, "long", green_long)
    print(f"30-min video grounded whole: {whole_iou:.2f}")
    assert whole_iou < 0.2
