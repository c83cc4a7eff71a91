"""The dtype C3D computes in: bfloat16 features agree with float32 ones on the real sample videos; ``auto``
follows the CPU; the store records what was used."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from drn.errors import InputError
from pipeline.c3d import (
    COMPUTE_DTYPES,
    CPU_BF16_FLAGS,
    C3DFeatureExtractor,
    build_c3d,
    center_crop,
    cpu_flags,
    cpu_has_native_bf16,
    resolve_compute_dtype,
)
from pipeline.clips import ClipCutter
from pipeline.decode import VideoDecoder

VIDEOS = ("flipping_a_pancake.mkv", "decord_video_0.mov")  # 10.4 s of real H.264, and a 3-frame edge case


def real_clips(path: Path, stride: int = 32) -> np.ndarray:
    """Every clip of a real video (16 frames, every ``stride`` frames), centre-cropped: ``[N, 16, 112, 112, 3]``."""
    cutter = ClipCutter(16, stride)
    clips = [c for block in VideoDecoder(str(path)).blocks()
             for c, _, _ in cutter.push(center_crop(block.frames), block.start_s, block.end_s)]
    clips += [c for c, _, _ in cutter.finish()]
    return np.concatenate(clips)


@pytest.mark.slow
def test_bfloat16_features_agree_with_float32_per_clip_on_the_real_videos(shared_data: Path) -> None:
    crops = np.concatenate([real_clips(shared_data / "videos" / name) for name in VIDEOS])
    assert len(crops) == 11  # 10 clips of the pancake video (one every 32 frames), 1 padded clip of the 3 frames
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        model = build_c3d(None, seed=0)  # seeded random weights: the real ones cannot be fetched here
        fp32 = C3DFeatureExtractor(model, dtype="float32", batch_size=4)(crops)
        bf16 = C3DFeatureExtractor(model, dtype="bfloat16", batch_size=4)(crops)
    finally:
        torch.set_num_threads(threads)
    assert fp32.dtype == bf16.dtype == np.float32 and fp32.shape == bf16.shape == (11, 4096)
    assert not np.array_equal(fp32, bf16)  # bf16 really ran: the features are close, not equal
    cosine = (fp32 * bf16).sum(1) / (np.linalg.norm(fp32, axis=1) * np.linalg.norm(bf16, axis=1))
    assert cosine.min() >= 0.99, cosine
    print(f"bf16 vs fp32 cosine per clip: min {cosine.min():.5f}, mean {cosine.mean():.5f}")
    assert (np.linalg.norm(fp32, axis=1) > 0).all()  # live features, not all-zero ReLUs


def test_auto_takes_bfloat16_exactly_where_the_cpu_does_it_natively() -> None:
    native = cpu_has_native_bf16()
    assert resolve_compute_dtype("auto", "cpu") == ("bfloat16" if native else "float32")
    if cpu_flags() & set(CPU_BF16_FLAGS):  # e.g. this project's AMD EPYC with avx512_bf16 (see lscpu)
        assert native
    for explicit in COMPUTE_DTYPES[1:]:
        assert resolve_compute_dtype(explicit, "cpu") == explicit
    with pytest.raises(InputError, match="--dtype must be one of auto, float32, bfloat16, float16"):
        resolve_compute_dtype("fp8")


def test_the_cli_offers_the_same_dtypes_without_importing_torch() -> None:
    from jobs import extract

    assert extract.COMPUTE_DTYPES == COMPUTE_DTYPES
    dtype = next(a for a in extract.build_parser()._actions if a.dest == "dtype")
    assert dtype.default == "auto" and tuple(dtype.choices) == COMPUTE_DTYPES
