"""Carving a validation split out of a training split, by video, seeded and reproducible."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TypeVar

from drn.errors import InputError

DEFAULT_VAL_FRACTION = 0.1
DEFAULT_VAL_SEED = 0

T = TypeVar("T")


def is_val_video(video_id: str, fraction: float = DEFAULT_VAL_FRACTION, seed: int = DEFAULT_VAL_SEED) -> bool:
    """Whether ``video_id`` belongs to the carved validation split.

    The decision hashes ``"{seed}:{video_id}"`` with SHA-256 and compares the first 8 bytes, read as a fraction
    of 2**64, with ``fraction``. It depends on nothing else (not on file order, other videos, or library
    versions), so a video stays on its side when the training file grows. All queries of a video go to the
    same side, so no validation video is seen in training.
    """
    digest = hashlib.sha256(f"{seed}:{video_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def check_val_fraction(fraction: float) -> float:
    if not 0.0 < fraction < 1.0:
        raise InputError(f"val_fraction must be between 0 and 1 (exclusive), got {fraction}")
    return float(fraction)


def select_side(items: Sequence[T], video_of, *, val: bool, fraction: float, seed: int) -> list[T]:
    """The items on the validation side (``val=True``) or the training side of the carve."""
    return [item for item in items if is_val_video(video_of(item), fraction, seed) == val]
