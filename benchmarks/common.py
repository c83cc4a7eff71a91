"""What the benchmarks share: the machine and its load, peak memory, folder sizes, percentiles, and synthetic
libraries with a random checkpoint (features written directly, a retrieval head marked trained: timing only).

Run from the benchmarks' folder (``python benchmarks/X.py`` puts it first on ``sys.path``): ``from common import``.
"""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from drn.checkpoint import save_checkpoint
from drn.config import DRNConfig, load_config
from drn.model import new_model
from drn.store import FeatureStoreWriter, StoreMetadata, VideoRecord
from drn.text import vocabulary_and_vectors

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {"paper": REPO / "configs" / "charades_sta.yaml", "demo": REPO / "configs" / "demo.yaml"}
DURATION_S = 30.0
SEARCHES = ["a person opens the door", "someone is cooking at the stove", "a man sits down on a chair",
            "the woman drinks a glass of water", "a person puts a book on the shelf", "somebody turns off the light",
            "a child laughs at the television", "the person takes a phone out of a bag", "someone washes the dishes",
            "a man closes the laptop and stands up", "the red square moves left", "a blue circle grows",
            "a person runs down the stairs", "someone folds a blanket", "the cat jumps on the table",
            "a woman eats a sandwich", "a person throws a pillow", "someone holds a cup of coffee",
            "the man opens the refrigerator", "a girl brushes her hair"]


def machine() -> str:
    model = ""
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")),
                     "")
    except OSError:
        pass
    return f"{model or platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def reset_peak_memory() -> None:
    """Reset VmHWM (Linux: writing 5 to clear_refs); the peak then starts from the current resident size."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_memory_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def percentiles(times: Sequence[float]) -> tuple[float, float]:
    p50, p95 = np.percentile(np.array(times), [50, 95])
    return float(p50), float(p95)


def write_store(path: Path, count: int, num_clips: int, dim: int, seed: int, videos_per_shard: int = 1000) -> None:
    """``count`` videos of 30 s with ``num_clips`` float16 clips each (random features), in shards of 1000."""
    rng = np.random.default_rng(seed)
    meta = StoreMetadata("synthetic", "random", "none", clip_len=16, clip_stride=16, fps="native",
                         feature_dim=dim, dtype="float16")
    starts = np.arange(num_clips) * DURATION_S / num_clips
    ends = starts + DURATION_S / num_clips
    with FeatureStoreWriter(path, meta, videos_per_shard=videos_per_shard) as writer:
        for first in range(0, count, 100):
            block = rng.standard_normal((min(100, count - first), num_clips, dim), dtype=np.float32)
            np.maximum(block, 0, out=block)  # ReLU features, as C3D fc6
            for i, features in enumerate(block):
                vid = f"video{first + i:06d}"
                writer.add_clips(vid, features, starts, ends)
                writer.finish_video(VideoRecord(vid, f"synthetic://{vid}", duration_s=DURATION_S,
                                                num_clips=num_clips))


def random_checkpoint(path: Path, config_path: Path, retrieval_dim: int) -> DRNConfig:
    """A checkpoint with random weights, a retrieval head marked trained (timing only), and the searches' words."""
    config = load_config(config_path, [f"model.retrieval_dim={retrieval_dim}"])
    vocab, _ = vocabulary_and_vectors(SEARCHES, config.text)
    torch.manual_seed(0)
    model = new_model(config, vocab).eval()
    model.retrieval.trained_epochs.fill_(1)
    save_checkpoint(path, model, vocab, stage=4, metrics={"train_duration_s": {"median": DURATION_S,
                                                                               "p95": DURATION_S}})
    return config
