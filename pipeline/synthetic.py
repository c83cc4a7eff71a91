"""A synthetic video library with known moments, for the demo and the tests.

Each video shows a dark background on which large coloured shapes (red/green/blue square/circle/triangle) appear
one after another: each appears, does one thing for a few seconds (moves left/right/up/down or grows) and vanishes
before the next appears. Shapes within a video are distinct (colour and kind), events last a few seconds in videos
of 15-30 s by default, and colour and motion fill much of the frame, so even C3D with random weights separates them.

Annotations follow DESIGN.md section 6 (own-data JSONL): ``train.jsonl``, ``val.jsonl``, ``test.jsonl`` with
``video_id, query, start_s, end_s, duration_s, qid``; all queries of a video go to one split. Queries come from
templates: "the red square moves left" (the shape's whole appearance) and "a blue circle appears after the green
triangle vanishes" (the later shape's appearance). ``events.jsonl`` lists every event. Everything is a function of
the seed; videos are H.264 (libx264) or, where the PyAV wheel lacks it, MPEG-4 Part 2.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

COLORS = {"red": (225, 35, 35), "green": (35, 205, 60), "blue": (45, 80, 245)}
SHAPES = ("square", "circle", "triangle")
ACTIONS = ("moves left", "moves right", "moves up", "moves down", "grows")
BACKGROUND = (40, 40, 40)
SPLITS = ("train", "val", "test")

# Words that appear in no query, for a search that only the meaning of the words can answer.
PARAPHRASE_WORDS = {  # each maps to the right colour, shape or motion in MiniLM's space (checked on all 45 queries)
    "red": "crimson", "green": "lime", "blue": "navy",
    "square": "box", "circle": "disc", "triangle": "pyramid",
    "moves left": "slides leftward", "moves right": "slides rightward", "moves up": "rises",
    "moves down": "sinks", "grows": "expands",
}


@dataclass(frozen=True)
class ShapeEvent:
    """One shape's appearance: it is visible over ``[appear_s, vanish_s)`` and does ``action`` meanwhile."""

    video_id: str
    color: str
    shape: str
    action: str
    appear_s: float
    vanish_s: float


@dataclass(frozen=True)
class SyntheticVideo:
    video_id: str
    num_frames: int
    fps: float
    width: int
    height: int
    events: tuple[ShapeEvent, ...]

    @property
    def duration_s(self) -> float:
        return self.num_frames / self.fps


def pick_codec() -> str:
    """libx264 when the installed PyAV wheel has it, else mpeg4."""
    import av

    try:
        av.codec.Codec("libx264", "w")
        return "libx264"
    except Exception:
        return "mpeg4"


def plan_video(video_id: str, rng: np.random.Generator, duration_s: float, fps: float, width: int, height: int
               ) -> SyntheticVideo:
    """Non-overlapping events of a few seconds separated by short gaps, distinct (colour, shape) per video."""
    num_frames = max(1, int(round(duration_s * fps)))
    duration_s = num_frames / fps
    longest = min(6.0, 0.7 * duration_s)
    shortest = min(3.0, 0.4 * duration_s)
    kinds = [(c, s) for c in COLORS for s in SHAPES]
    order = rng.permutation(len(kinds))
    events: list[ShapeEvent] = []
    t = float(rng.uniform(0.2, min(1.0, 0.1 * duration_s + 0.2)))
    for index in order:
        remaining = duration_s - 0.1 - t
        if events and remaining < shortest:
            break
        length = min(float(rng.uniform(shortest, longest)), max(remaining, 1.0 / fps))
        color, shape = kinds[index]
        action = ACTIONS[int(rng.integers(len(ACTIONS)))]
        appear = round(t, 3)
        vanish = round(min(t + length, duration_s), 3)
        events.append(ShapeEvent(video_id, color, shape, action, appear, vanish))
        t = vanish + float(rng.uniform(0.5, 2.0))
    return SyntheticVideo(video_id, num_frames, float(fps), width, height, tuple(events))


def _shape_mask(shape: str, cx: float, cy: float, half: float, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    if shape == "square":
        return (np.abs(xx - cx) <= half) & (np.abs(yy - cy) <= half)
    if shape == "circle":
        return (xx - cx) ** 2 + (yy - cy) ** 2 <= half**2
    # an upward triangle: apex at the top, base at the bottom of the box
    top, bottom = cy - half, cy + half
    rel = (yy - top) / max(2 * half, 1e-6)  # 0 at the apex, 1 at the base
    return (yy >= top) & (yy <= bottom) & (np.abs(xx - cx) <= rel * half)


def _pose(event: ShapeEvent, t: float, width: int, height: int) -> tuple[float, float, float]:
    """Centre x, centre y and half-size of the shape at time ``t`` (inside its appearance)."""
    progress = (t - event.appear_s) / max(event.vanish_s - event.appear_s, 1e-6)
    progress = min(max(progress, 0.0), 1.0)
    base = 0.22 * min(width, height)
    cx, cy, half = width / 2, height / 2, base
    if event.action == "moves left":
        cx = width * (0.75 - 0.5 * progress)
    elif event.action == "moves right":
        cx = width * (0.25 + 0.5 * progress)
    elif event.action == "moves up":
        cy = height * (0.72 - 0.44 * progress)
    elif event.action == "moves down":
        cy = height * (0.28 + 0.44 * progress)
    elif event.action == "grows":
        half = base * (0.5 + 1.0 * progress)
    return cx, cy, half


def render_frames(video: SyntheticVideo) -> Iterator[np.ndarray]:
    """The video's RGB frames ``[H, W, 3]`` uint8, one at a time."""
    yy, xx = np.mgrid[0 : video.height, 0 : video.width].astype(np.float32)
    for i in range(video.num_frames):
        t = (i + 0.5) / video.fps
        frame = np.empty((video.height, video.width, 3), np.uint8)
        frame[:] = BACKGROUND
        for event in video.events:
            if event.appear_s <= t < event.vanish_s:
                cx, cy, half = _pose(event, t, video.width, video.height)
                frame[_shape_mask(event.shape, cx, cy, half, yy, xx)] = COLORS[event.color]
        yield frame


def write_video(path: str | Path, frames: Iterable[np.ndarray], fps: float, codec: str | None = None) -> str:
    """Encode RGB frames to ``path`` with PyAV (H.264 when available); returns the codec used."""
    import av

    codec = codec or pick_codec()
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), "w") as container:
        stream = None
        for frame in frames:
            if stream is None:
                stream = container.add_stream(codec, rate=rate)
                stream.height, stream.width = frame.shape[0] - frame.shape[0] % 2, frame.shape[1] - frame.shape[1] % 2
                stream.pix_fmt = "yuv420p"
                stream.thread_count = 1
                if codec == "libx264":
                    stream.options = {"crf": "20", "preset": "veryfast"}
            image = np.ascontiguousarray(frame[: stream.height, : stream.width])
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        if stream is not None:
            for packet in stream.encode():
                container.mux(packet)
    return codec


def queries_of(video: SyntheticVideo) -> list[tuple[str, float, float]]:
    """(query, start_s, end_s) of every templated query about the video's events."""
    out = []
    for i, event in enumerate(video.events):
        out.append((f"the {event.color} {event.shape} {event.action}", event.appear_s, event.vanish_s))
        if i > 0:
            prev = video.events[i - 1]
            query = f"a {event.color} {event.shape} appears after the {prev.color} {prev.shape} vanishes"
            out.append((query, event.appear_s, event.vanish_s))
    return out


def paraphrase(text: str) -> str | None:
    """``"the red square moves left"`` -> ``"crimson box slides leftward"``: the same event in words that no query
    uses (``PARAPHRASE_WORDS``); None for a text of another template."""
    words = text.split()
    if len(words) < 4 or words[0] != "the":
        return None
    colour, shape, action = words[1], words[2], " ".join(words[3:])
    if colour not in PARAPHRASE_WORDS or shape not in PARAPHRASE_WORDS or action not in PARAPHRASE_WORDS:
        return None
    return f"{PARAPHRASE_WORDS[colour]} {PARAPHRASE_WORDS[shape]} {PARAPHRASE_WORDS[action]}"


def split_of_videos(video_ids: list[str], rng: np.random.Generator) -> dict[str, str]:
    """About 70/10/20 train/val/test by video (at least one test and one val video once there are three)."""
    order = [video_ids[i] for i in rng.permutation(len(video_ids))]
    n = len(order)
    n_test = max(1, round(0.2 * n)) if n >= 2 else 0
    n_val = max(1, round(0.1 * n)) if n >= 3 else 0
    split = {}
    for i, vid in enumerate(order):
        split[vid] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return split


def make_library(
    out: str | Path,
    *,
    num_videos: int = 20,
    seed: int = 0,
    min_duration_s: float = 15.0,
    max_duration_s: float = 30.0,
    fps: float = 25.0,
    width: int = 160,
    height: int = 120,
    codec: str | None = None,
    progress: bool = False,
) -> dict:
    """Write ``out/videos/*.mp4`` and ``out/annotations/{train,val,test,events}.jsonl``; returns a summary."""
    if num_videos < 1:
        raise ValueError(f"num_videos must be positive, not {num_videos}")
    if not 0 < min_duration_s <= max_duration_s:
        raise ValueError(f"durations must satisfy 0 < min <= max, not {min_duration_s}, {max_duration_s}")
    out = Path(out)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    codec = codec or pick_codec()
    digits = max(4, int(math.log10(num_videos)) + 1)
    videos = []
    for i in range(num_videos):
        duration = float(rng.uniform(min_duration_s, max_duration_s))
        videos.append(plan_video(f"synth_{i:0{digits}d}", rng, duration, fps, width, height))
    split = split_of_videos([v.video_id for v in videos], rng)
    iterator: Iterable[SyntheticVideo] = videos
    if progress:
        from tqdm import tqdm

        iterator = tqdm(videos, desc="videos", unit="video")
    for video in iterator:
        write_video(out / "videos" / f"{video.video_id}.mp4", render_frames(video), video.fps, codec)
    lines: dict[str, list[str]] = {name: [] for name in SPLITS}
    for video in videos:
        rows = lines[split[video.video_id]]
        for query, start, end in queries_of(video):
            row = {"video_id": video.video_id, "query": query, "start_s": start, "end_s": end,
                   "duration_s": round(video.duration_s, 6), "qid": len(rows)}
            rows.append(json.dumps(row))
    for name, rows in lines.items():
        (out / "annotations" / f"{name}.jsonl").write_text("".join(r + "\n" for r in rows))
    events = [json.dumps(asdict(e)) for v in videos for e in v.events]
    (out / "annotations" / "events.jsonl").write_text("".join(e + "\n" for e in events))
    return {
        "videos": len(videos),
        "codec": codec,
        "queries": {name: len(rows) for name, rows in lines.items()},
        "video_dir": str(out / "videos"),
        "annotations_dir": str(out / "annotations"),
    }
