"""Pictures and clips of a video file for the search service: a JPEG frame at a time, a short clip of a moment.

Both decode with PyAV. Times are seconds on the source's own clock (a frame's ``pts * time_base``), the clock
that extraction and grounding use, so a segment's ``start_s`` names the frame shown here.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import av
from PIL import Image

JPEG_QUALITY = 80


@dataclass(frozen=True)
class Clip:
    """An MP4 clip cut from a video: its bytes, and the source time (s) that the clip's time 0 shows."""

    data: bytes
    source_start_s: float
    source_end_s: float


def frame_jpeg(path: str | Path, t: float, width: int | None = None, quality: int = JPEG_QUALITY) -> bytes:
    """The frame on screen at ``t`` seconds (the last frame starting at or before ``t``) as JPEG bytes.

    ``width`` scales the picture down (the height keeps the aspect ratio; never up); None keeps the source size.
    A ``t`` past the last frame gives the last frame.
    """
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_count = 1
        container.seek(max(0, int(t / stream.time_base)), stream=stream, backward=True, any_frame=False)
        chosen = None
        for frame in container.decode(stream):
            if frame.time is None:
                continue
            if chosen is not None and frame.time > t + 1e-6:
                break
            chosen = frame
        if chosen is None:
            raise ValueError(f"no frame could be decoded from {path}")
        image = chosen.to_image()
    if width is not None and width < image.width:
        height = max(2, round(image.height * width / image.width))
        image = image.resize((width, height), Image.BILINEAR)
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def moment_clip(path: str | Path, start_s: float, end_s: float) -> Clip:
    """The packets from the last keyframe at or before ``start_s`` up to ``end_s``, copied (not re-encoded)
    into a fragmented MP4 that a browser plays; the first audio stream comes along when there is one.

    Cutting at a keyframe keeps it cheap and exact in picture; the clip may therefore begin a little before
    ``start_s``: ``Clip.source_start_s`` says where (clip time + source_start_s = source time).
    """
    buffer = io.BytesIO()
    with av.open(str(path)) as source:
        video = source.streams.video[0]
        streams = [video, *source.streams.audio[:1]]
        source.seek(max(0, int(start_s / video.time_base)), stream=video, backward=True, any_frame=False)
        offset_s: float | None = None
        last_s = start_s
        with av.open(buffer, "w", format="mp4",
                     options={"movflags": "frag_keyframe+empty_moov+default_base_moof"}) as target:
            outputs = {stream.index: target.add_stream_from_template(stream) for stream in streams}
            for packet in source.demux(streams):
                if packet.dts is None or packet.pts is None or packet.time_base is None:
                    continue  # flush packets carry no data
                dts_s = float(packet.dts * packet.time_base)
                is_video = packet.stream.index == video.index
                if offset_s is None:
                    if not (is_video and packet.is_keyframe):
                        continue  # a clip starts at a video keyframe
                    offset_s = dts_s
                if is_video and dts_s > end_s:
                    break  # every later packet is presented later still
                if dts_s < offset_s or (not is_video and dts_s > end_s):
                    continue
                if is_video:
                    last_s = max(last_s, float(packet.pts * packet.time_base))
                shift = round(offset_s / packet.time_base)
                packet.pts -= shift
                packet.dts -= shift
                packet.stream = outputs[packet.stream.index]
                target.mux(packet)
    if offset_s is None:
        raise ValueError(f"no keyframe at or before {start_s:.3f} s in {path}")
    return Clip(buffer.getvalue(), offset_s, last_s)
