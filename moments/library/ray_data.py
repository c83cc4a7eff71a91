"""A library's videos on Ray Data: which videos, how the work is spread, and the actor pool they flow through.

Every library job (grounding, cell indexing) maps batches of video ids through a pool of actors that each hold a
model, the pattern of Ray's own batch-inference examples: the model loads once in the actor's ``__init__`` and
``__call__(batch)`` does the work.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drn.errors import InputError
from drn.store import FeatureStore, VideoFeatures, load_each
from drn.store.object_store import is_uri
from pipeline.capacity import DEFAULT_WAIT_S

MAX_BLOCKS = 2000


@dataclass
class Resources:
    """How the work is spread: actors (each with the model), their GPUs and CPUs, batch sizes."""

    num_actors: int = 1
    num_gpus_per_actor: float = 0.0
    cpus_per_actor: float = 1.0
    videos_per_batch: int = 16  # videos per actor call (each scored against every query)
    pair_batch_size: int = 256  # (query, window) pairs per forward pass
    capacity_wait_s: float = DEFAULT_WAIT_S  # nodes lost and the actors no longer fit: stop after this long

    def __post_init__(self) -> None:
        if self.num_actors < 1 or self.videos_per_batch < 1 or self.pair_batch_size < 1:
            raise InputError("num_actors, videos_per_batch and pair_batch_size must be at least 1")
        if self.num_gpus_per_actor < 0 or self.cpus_per_actor <= 0:
            raise InputError("num_gpus_per_actor must be >= 0 and cpus_per_actor > 0")

    @property
    def device(self) -> str:
        return "cuda" if self.num_gpus_per_actor > 0 else "cpu"


@dataclass
class WindowOptions:
    """Explicit window settings in seconds; None takes the checkpoint's or the dataset's (moments.library.windows)."""

    window_s: float | None = None
    stride_s: float | None = None
    max_whole_s: float | None = None


def select_videos(store: FeatureStore, videos: str | Sequence[str] | None) -> list[str]:
    """The ``ok`` videos to ground, in shard order: all, or those named by a list, a comma list or a file."""
    ok = store.ok_video_ids()
    if videos is None:
        wanted = ok
    else:
        if isinstance(videos, str):  # a file (one id a line) or a comma-separated list, however long
            names = Path(videos).read_text().splitlines() if _is_local_file(videos) else videos.split(",")
        else:
            names = list(videos)
        wanted = list(dict.fromkeys(n.strip() for n in names if n.strip()))
        if not wanted:
            raise InputError("the list of videos names no video")
        unknown = sorted(set(wanted) - set(ok))
        if unknown:
            shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
            raise InputError(f"{len(unknown)} requested video(s) are not ok videos of the feature store: {shown}",
                             path=store.uri)
    shard_of = dict(zip(store.videos()["video_id"].to_pylist(), store.videos()["shard"].to_pylist(), strict=True))
    return sorted(wanted, key=lambda vid: (shard_of.get(vid, ""), vid))


def _is_local_file(text: str) -> bool:
    """Whether ``text`` names an existing local file; False (never an error) for text that cannot be a path."""
    return not is_uri(text) and os.path.isfile(text)


def load_videos(store: FeatureStore, video_ids: Iterable[str]) -> tuple[list[VideoFeatures], list[tuple[str, str]]]:
    """The videos that load, and ``(video_id, error)`` for those that do not."""
    return load_each(store.load, video_ids)


def videos_through_actors(actor: type, video_ids: Sequence[str | dict[str, Any]], resources: Resources,
                          constructor_args: tuple) -> Any:
    """A Ray Data dataset that sends ``video_ids`` in batches of ``resources.videos_per_batch`` through a pool of
    ``resources.num_actors`` ``actor``s (built with ``constructor_args``), each with the resources' CPUs and GPUs.

    An item is a video id, or a dict with ``video_id`` and per-video data (e.g. ``query_indices``, the queries that
    picked the video) that reaches the actor as more columns of its batch; all items carry the same keys.
    """
    import ray

    items = [item if isinstance(item, dict) else {"video_id": item} for item in video_ids]
    blocks = max(1, min(MAX_BLOCKS, -(-len(items) // resources.videos_per_batch)))
    dataset = ray.data.from_items(items, override_num_blocks=blocks)
    return dataset.map_batches(
        actor,
        batch_size=int(resources.videos_per_batch),
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=resources.num_actors),
        num_cpus=resources.cpus_per_actor,
        num_gpus=resources.num_gpus_per_actor if resources.num_gpus_per_actor > 0 else None,
        fn_constructor_args=constructor_args,
    )
