"""Decoding real files: the shared videos, generated videos of several lengths and rates, and broken files."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from pipeline.decode import DecodeError, VideoDecoder
from pipeline.synthetic import write_video


def _decode(path: Path | str, **kw) -> tuple[VideoDecoder, np.ndarray, np.ndarray, np.ndarray]:
    decoder = VideoDecoder(str(path), **kw)
    blocks = list(decoder.blocks())
    frames = np.concatenate([b.frames for b in blocks])
    if kw.get("fps") is None:  # bounded blocks (resampling up may repeat frames)
        assert all(len(b.frames) <= decoder.block_frames + 1 for b in blocks)
    return decoder, frames, np.concatenate([b.start_s for b in blocks]), np.concatenate([b.end_s for b in blocks])


def _ramp_video(path: Path, frames: int, fps: float, size: tuple[int, int] = (96, 128)) -> Path:
    """Each frame is one grey level that rises with its index, so decoded order can be checked."""
    levels = np.linspace(20, 235, frames) if frames > 1 else np.array([128.0])
    write_video(path, (np.full((*size, 3), int(v), np.uint8) for v in levels), fps)
    return path


def test_pancake_decodes_at_128x171_with_its_timestamps(shared_data: Path) -> None:
    decoder, frames, starts, ends = _decode(shared_data / "videos" / "flipping_a_pancake.mkv", block_frames=64)
    info = decoder.info
    assert frames.shape == (310, 128, 171, 3) and frames.dtype == np.uint8
    assert (info.num_frames, info.width, info.height, info.fps) == (310, 426, 240, 30.0)
    assert info.decoder == "decord"
    assert np.all(np.diff(starts) > 0) and np.all(ends > starts)
    np.testing.assert_allclose(starts, np.arange(310) / 30.0, atol=1.5e-3)
    assert info.duration_s == pytest.approx(10.333, abs=2e-3)


def test_three_frame_video(shared_data: Path) -> None:
    decoder, frames, starts, ends = _decode(shared_data / "videos" / "decord_video_0.mov")
    assert frames.shape == (3, 128, 171, 3)
    assert (decoder.info.width, decoder.info.height) == (568, 320)
    np.testing.assert_allclose(ends, [1 / 30, 2 / 30, 3 / 30], atol=1e-4)


@pytest.mark.parametrize(("frames", "fps"), [(1, 25.0), (16, 25.0), (45, 15.0), (70, 30.0), (23, 12.5)])
def test_generated_videos_keep_every_frame_in_order(tmp_path: Path, frames: int, fps: float) -> None:
    path = _ramp_video(tmp_path / f"ramp_{frames}.mp4", frames, fps)
    decoder, got, starts, ends = _decode(path, block_frames=7)
    assert len(got) == decoder.info.num_frames == frames
    assert decoder.info.fps == pytest.approx(fps)
    np.testing.assert_allclose(starts, np.arange(frames) / fps, atol=2e-3)
    assert decoder.info.duration_s == pytest.approx(frames / fps, abs=2e-3)
    levels = got.reshape(frames, -1).mean(axis=1)
    assert np.all(np.diff(levels) > 0)  # each frame once, in order
    # PyAV, the fallback decoder, sees the same frames
    fallback, got_av, starts_av, _ = _decode(path, decoder="pyav", block_frames=5)
    assert fallback.info.decoder == "pyav" and len(got_av) == frames
    np.testing.assert_allclose(starts_av, starts, atol=2e-3)
    assert np.abs(got_av.reshape(frames, -1).mean(axis=1) - levels).max() < 3


@pytest.mark.parametrize("fps", [2.0, 10.0, 50.0])
def test_resampling_to_a_fixed_rate(tmp_path: Path, fps: float) -> None:
    path = _ramp_video(tmp_path / "ramp.mp4", 40, 20.0)  # 2.0 s
    decoder, got, starts, ends = _decode(path, fps=fps, block_frames=6)
    expected = math.ceil(2.0 * fps - 1e-6)
    assert len(got) == decoder.info.num_frames == expected
    np.testing.assert_allclose(starts, np.arange(expected) / fps, atol=1e-6)
    np.testing.assert_allclose(ends, np.minimum((np.arange(expected) + 1) / fps, 2.0), atol=1e-3)
    # sample k shows the last native frame starting at or before k / fps
    native = VideoDecoder(str(path))
    all_frames = np.concatenate([b.frames for b in native.blocks()])
    picks = np.floor(np.arange(expected) / fps * 20.0 + 1e-6).astype(int)
    np.testing.assert_array_equal(got, all_frames[picks])


def test_broken_inputs_raise_decode_errors(tmp_path: Path, shared_data: Path) -> None:
    text = tmp_path / "notes.mp4"
    text.write_text("this is a text file, not a video\n" * 20)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    whole = _ramp_video(tmp_path / "whole.mp4", 30, 25.0)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    for path, message in [(text, "not a readable video"), (empty, "not a readable video"), (cut, "not a readable"),
                          (tmp_path / "missing.mp4", "file not found")]:
        with pytest.raises(DecodeError, match=message):
            list(VideoDecoder(str(path)).blocks())


def test_truncated_matroska_decodes_what_it_holds(tmp_path: Path, shared_data: Path) -> None:
    data = (shared_data / "videos" / "flipping_a_pancake.mkv").read_bytes()
    cut = tmp_path / "pancake_half.mkv"
    cut.write_bytes(data[: len(data) // 2])
    decoder, frames, starts, ends = _decode(cut)
    assert 0 < len(frames) < 310 and decoder.info.num_frames == len(frames)
    assert decoder.info.duration_s == pytest.approx(ends[-1])
    assert np.all(np.diff(starts) > 0)
