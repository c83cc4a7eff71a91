"""Video decoding into bounded blocks of RGB frames resized to 128x171 while decoding (DESIGN.md section 4).

decord is the main decoder: one decoder thread, contiguous ``get_batch`` reads of at most ``block_frames`` frames,
the frames scaled by the decoder itself. decord 0.6 is old and fails on some files (it cannot open them, or it
promises more frames than the file holds and errors when reading past the real end); PyAV then takes over from
the first frame decord did not deliver, so the stream of frames goes on without a gap or a repeat. A stream
that ends in a decoding error (a truncated or corrupt file), a file that is no video, and a video with no frames
raise :class:`DecodeError`; the extraction turns that into the video's ``failed`` row.

A video may be a local path or an object-store URI (``s3://...``): its bytes are read through pyarrow's
filesystems (``drn.store.object_store``), never copied to a temporary file. A video up to ``max_in_memory_bytes`` is
read once into memory and decoded from there (decord reads from bytes); a larger one is decoded by PyAV straight
from a seekable pyarrow file, so memory stays bounded whatever the file's size.

Optional resampling to a fixed rate ``fps``: sample ``k`` is taken at ``t_k = t_0 + k / fps`` (``t_0`` the first
frame's start) for every ``t_k`` before the video's end, and shows the last frame starting at or before ``t_k``.
Its start and end times are ``t_k`` and ``min(t_k + 1/fps, end)``. Without resampling each frame keeps the start
and end times the decoder reports.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.fs as pafs

from drn.store.object_store import filesystem_for, is_object_store_uri

DECODE_HEIGHT = 128
DECODE_WIDTH = 171
DEFAULT_BLOCK_FRAMES = 64
MAX_IN_MEMORY_BYTES = 512 << 20  # object-store videos up to this size are decoded from memory (decord)
_TIME_TOLERANCE_S = 1e-4  # decoders report float32 times


class DecodeError(RuntimeError):
    """A video that cannot be decoded (not a video, truncated, corrupt, no frames)."""


@dataclass
class FrameBlock:
    """Consecutive decoded frames ``[n, H, W, 3]`` uint8 RGB with each frame's start and end in seconds."""

    frames: np.ndarray
    start_s: np.ndarray
    end_s: np.ndarray


@dataclass
class VideoInfo:
    """Facts about a decoded video; ``num_frames`` and ``duration_s`` are what was actually decoded."""

    fps: float | None = None
    width: int | None = None
    height: int | None = None
    num_frames: int = 0
    duration_s: float | None = None
    decoder: str = "decord"


class VideoDecoder:
    """Decodes one local video file block by block; ``info`` is complete once ``blocks()`` is exhausted."""

    def __init__(
        self,
        path: str,
        *,
        fps: float | None = None,
        block_frames: int = DEFAULT_BLOCK_FRAMES,
        decoder: str = "decord",
        height: int = DECODE_HEIGHT,
        width: int = DECODE_WIDTH,
        max_in_memory_bytes: int = MAX_IN_MEMORY_BYTES,
    ) -> None:
        if fps is not None and not fps > 0:
            raise ValueError(f"fps must be positive, not {fps}")
        self.path = path
        self.max_in_memory_bytes = max_in_memory_bytes
        self._remote: tuple[pafs.FileSystem, str] | None = None  # an object-store video: its filesystem and path
        self._bytes: bytes | None = None  # ... and its bytes, when small enough to hold
        self.fps = fps
        self.block_frames = max(1, block_frames)
        self.size = (height, width)
        if decoder not in ("decord", "pyav"):
            raise ValueError(f"decoder must be decord or pyav, not {decoder!r}")
        self.decoder = decoder
        self.info = VideoInfo()

    def blocks(self) -> Iterator[FrameBlock]:
        """Frame blocks in time order (resampled when ``fps`` is set). Raises DecodeError when decoding fails."""
        self.info = VideoInfo()
        self._locate()
        self._probe_source_size()
        sampler = _Resampler(self.fps) if self.fps else None
        delivered = 0
        decoder = self.decoder if self._remote is None or self._bytes is not None else "pyav"  # too big for decord
        source = self._decord_blocks() if decoder == "decord" else self._pyav_blocks(0, None)
        self.info.decoder = decoder
        while True:
            try:
                block = next(source)
            except StopIteration:
                break
            except _DecordFailed as failure:
                source = self._pyav_blocks(skip=failure.frames_done, cause=failure.cause)
                self.info.decoder = "pyav"
                continue
            delivered += len(block.frames)
            yield from ([block] if sampler is None else sampler.push(block))
        if delivered == 0:
            raise DecodeError("the video has no decodable frames")
        if sampler is not None:
            yield from sampler.finish()
            self.info.num_frames = sampler.emitted
        else:
            self.info.num_frames = delivered
        self._bytes = None

    def frames_at(self, times_s: list[float]) -> np.ndarray:
        """RGB frames ``[n, H, W, 3]`` at the video's own size showing the given times (frame ``int(t * fps)``),
        read with one ``get_batch`` (for looking at found moments, e.g. in the notebook)."""
        import decord

        self._locate()
        reader = decord.VideoReader(self._input(), ctx=decord.cpu(0), num_threads=1)
        fps = float(reader.get_avg_fps()) or 25.0
        indices = [min(max(int(t * fps), 0), len(reader) - 1) for t in times_s]
        frames = reader.get_batch(indices).asnumpy()
        self._bytes = None
        return frames

    def _locate(self) -> None:
        """Local files are opened by path; an object-store video is checked, and read into memory when small."""
        self._remote, self._bytes = None, None
        if not is_object_store_uri(self.path):
            if not os.path.exists(self.path.removeprefix("file://")):
                raise DecodeError("file not found")
            return
        try:
            fs, inner = filesystem_for(self.path)
            info = fs.get_file_info(inner)
        except Exception as error:  # a bucket or credentials problem: the video's failure row says which
            raise DecodeError(f"cannot read the video: {_first_line(error)}") from error
        if info.type != pafs.FileType.File:
            raise DecodeError("file not found")
        self._remote = (fs, inner)
        if info.size is not None and info.size <= self.max_in_memory_bytes:
            with fs.open_input_stream(inner) as stream:
                self._bytes = stream.read()

    def _input(self) -> Any:
        """What decord and PyAV open: the local path, the bytes in memory, or a seekable object-store file."""
        if self._remote is None:
            return self.path.removeprefix("file://")
        if self._bytes is not None:
            return io.BytesIO(self._bytes)
        fs, inner = self._remote
        return fs.open_input_file(inner)

    def _probe_source_size(self) -> None:
        import av

        try:
            with av.open(self._input()) as container:
                if not container.streams.video:
                    raise DecodeError("the file holds no video stream")
                stream = container.streams.video[0]
                self.info.width = int(stream.codec_context.width) or None
                self.info.height = int(stream.codec_context.height) or None
                rate = stream.average_rate or stream.guessed_rate
                self.info.fps = float(rate) if rate else None
        except DecodeError:
            raise
        except Exception as error:  # any demuxer error: not a readable video
            raise DecodeError(f"not a readable video ({type(error).__name__}: {error})") from error

    def _decord_blocks(self) -> Iterator[FrameBlock]:
        import decord

        done = 0
        try:
            reader = decord.VideoReader(self._input(), ctx=decord.cpu(0), width=self.size[1], height=self.size[0],
                                        num_threads=1)
            count = len(reader)
            fps = reader.get_avg_fps()
            if fps and math.isfinite(fps) and fps > 0:
                self.info.fps = float(fps)
            while done < count:
                stop = min(count, done + self.block_frames)
                indices = list(range(done, stop))
                frames = reader.get_batch(indices).asnumpy()
                times = np.asarray(reader.get_frame_timestamp(indices), dtype=np.float64).reshape(-1, 2)
                if frames.shape != (len(indices), *self.size, 3) or not np.isfinite(times).all():
                    raise RuntimeError(f"decord returned frames {frames.shape} for {len(indices)} indices")
                self._note_end(times[-1, 1])
                done = stop
                yield FrameBlock(frames, times[:, 0].copy(), times[:, 1].copy())
        except Exception as error:  # decord raises many kinds; PyAV decides
            raise _DecordFailed(done, error) from error

    def _pyav_blocks(self, skip: int, cause: BaseException | None) -> Iterator[FrameBlock]:
        import av

        frames: list[np.ndarray] = []
        starts: list[float] = []
        index = 0
        try:
            with av.open(self._input()) as container:
                stream = container.streams.video[0]
                stream.thread_count = 1
                rate = float(stream.average_rate or stream.guessed_rate or 0) or None
                if rate:
                    self.info.fps = rate
                for frame in container.decode(stream):
                    start = float(frame.time) if frame.time is not None else index / (rate or 1.0)
                    if index >= skip:
                        rgb = frame.reformat(width=self.size[1], height=self.size[0], format="rgb24")
                        frames.append(rgb.to_ndarray())
                        starts.append(start)
                        if len(frames) > self.block_frames:  # the next frame's start ends the previous one
                            yield self._pyav_block(frames[:-1], starts)
                            frames, starts = frames[-1:], starts[-1:]
                    index += 1
        except Exception as error:
            raise DecodeError(
                f"decoding failed after frame {index} ({_describe(cause)}pyav: {type(error).__name__}: "
                f"{_first_line(error)})"
            ) from error
        if index == 0:
            raise DecodeError(f"no frames could be decoded ({_describe(cause)}pyav: no frames)")
        if frames:
            last_end = starts[-1] + 1.0 / (self.info.fps or 30.0)
            yield self._pyav_block(frames, starts + [last_end])

    def _pyav_block(self, frames: list[np.ndarray], starts: list[float]) -> FrameBlock:
        """``frames`` with ``starts`` holding one more entry than frames: the end of the last one."""
        times = np.asarray(starts, dtype=np.float64)
        self._note_end(times[len(frames)])
        return FrameBlock(np.stack(frames), times[: len(frames)], times[1 : len(frames) + 1])

    def _note_end(self, end_s: float) -> None:
        self.info.duration_s = float(end_s)


class _DecordFailed(Exception):
    def __init__(self, frames_done: int, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.frames_done = frames_done
        self.cause = cause


def _describe(decord_error: BaseException | None) -> str:
    if decord_error is None:
        return ""
    return f"decord: {type(decord_error).__name__}: {_first_line(decord_error)}; "


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else ""


class _Resampler:
    """Turns native frames into samples at a fixed rate (rule in the module docstring), block by block.

    A sample is settled once a later frame has started after its time; it is emitted once its end is known to lie
    inside the video, so only the last few samples wait for ``finish()``.
    """

    def __init__(self, fps: float) -> None:
        self.fps = fps
        self.t0: float | None = None
        self.emitted = 0
        self.end_s = 0.0
        self._picked = 0
        self._last: tuple[np.ndarray, float] | None = None  # the latest frame and its start
        self._waiting: list[tuple[np.ndarray, float]] = []  # picked samples whose end is not known yet

    def _time(self, k: int) -> float:
        assert self.t0 is not None
        return self.t0 + k / self.fps

    def push(self, block: FrameBlock) -> Iterator[FrameBlock]:
        if self.t0 is None:
            self.t0 = float(block.start_s[0])
        self.end_s = float(block.end_s[-1])
        if self._last is not None:
            pool = np.concatenate([self._last[0][None], block.frames])
            pool_starts = np.concatenate([[self._last[1]], block.start_s])
        else:
            pool, pool_starts = block.frames, np.asarray(block.start_s)
        self._pick(pool, pool_starts, limit=float(pool_starts[-1]))
        self._last = (block.frames[-1], float(block.start_s[-1]))
        yield from self._release(until=float(pool_starts[-1]))

    def finish(self) -> Iterator[FrameBlock]:
        if self._last is not None:
            self._pick(self._last[0][None], np.array([self._last[1]]), limit=self.end_s)
            self._last = None
        yield from self._release(until=math.inf)

    def _pick(self, pool: np.ndarray, pool_starts: np.ndarray, limit: float) -> None:
        times = []
        while self._time(self._picked + len(times)) < limit - _TIME_TOLERANCE_S:
            times.append(self._time(self._picked + len(times)))
        if not times:
            return
        found = np.searchsorted(pool_starts, np.array(times) + _TIME_TOLERANCE_S, side="right") - 1
        picks = np.clip(found, 0, len(pool) - 1)
        self._waiting.extend((pool[p], t) for p, t in zip(picks, times, strict=True))
        self._picked += len(times)

    def _release(self, until: float) -> Iterator[FrameBlock]:
        ready = 0
        while ready < len(self._waiting) and self._waiting[ready][1] + 1.0 / self.fps <= until + _TIME_TOLERANCE_S:
            ready += 1
        if ready == 0:
            return
        out, self._waiting = self._waiting[:ready], self._waiting[ready:]
        times = np.array([t for _, t in out])
        self.emitted += ready
        yield FrameBlock(np.stack([f for f, _ in out]), times, np.minimum(times + 1.0 / self.fps, self.end_s))
