"""C3D feature extraction of a video library on Ray Data, written to a feature store (DESIGN.md sections 3-4).

The pipeline has three stages:

1. **decode** (CPU tasks, ``flat_map`` on a task pool): each video is decoded block by block (``pipeline.decode``),
   cut into overlapping clips (``pipeline.clips``), centre-cropped to 112x112 and emitted as *segments*: rows of at
   most ``clips_per_row`` consecutive clips. The last segment of a video carries its facts (frames, fps, size) or
   its failure. Memory per task is bounded by one decoded block plus one segment, whatever the video's length.
2. **C3D** (an ``ActorPoolStrategy`` actor pool, on GPUs when requested): features of every clip of a segment.
3. **write** (the driver): segments arrive in order (the dataset preserves order) and go to one
   ``FeatureStoreWriter``, which writes full chunks at once and seals a shard every ``videos_per_shard`` videos.
   A job killed mid-way loses only its unsealed shard; a rerun skips the videos already recorded.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from drn.errors import InputError
from drn.store import (
    FeatureStore,
    FeatureStoreWriter,
    StoreMetadata,
    VideoRecord,
    check_store_location,
)
from drn.store.object_store import filesystem_for
from pipeline.c3d import (
    C3DConfig,
    C3DFeatureExtractor,
    build_c3d,
    center_crop,
    resolve_compute_dtype,
    store_metadata,
)
from pipeline.capacity import DEFAULT_WAIT_S, PipelineNeeds, watch
from pipeline.clips import ClipCutter, num_clips
from pipeline.decode import DEFAULT_BLOCK_FRAMES, DecodeError, VideoDecoder
from pipeline.ray_runtime import start_ray
from pipeline.sources import VideoSource

_UNKNOWN = -1.0  # numbers a failed video lacks travel as -1 (Arrow blocks then share one schema)


@dataclass(frozen=True)
class Resources:
    """How much of the cluster the extraction uses."""

    num_actors: int = 1
    num_gpus_per_actor: float = 0.0
    cpus_per_actor: float = 1.0
    decode_tasks: int | None = None  # None: the cluster's CPUs left after the actors, at least one
    batch_size: int = 8  # clips per forward pass
    clips_per_row: int | None = None  # None: batch_size
    torch_threads: int | None = None  # CPU threads of each actor's network; None: cpus_per_actor (default_resources
    # gives CPU actors the smallest node's CPUs shared among them: decoding takes a few % of the CPU that C3D does)


@dataclass
class ExtractionSummary:
    """What a run did."""

    done: int = 0
    failed: int = 0
    skipped: int = 0
    clips: int = 0
    frames: int = 0
    seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)
    compute_dtype: str = ""  # what C3D computed in (``--dtype auto`` resolved on a worker)
    startup_s: float = 0.0  # from the start to the first features written: Ray Data, the actors, the first batch

    def throughput_line(self) -> str:
        """Counts over the measured wall time of the whole run, and when the first features were written.

        No rate "after start-up": rows reach the driver in bursts (a video's segments often all at once), so the
        clips written after the first write are not the clips computed after it, and such a rate is not a
        measurement (it printed 1913 clips/s for a 30 s video on 2 CPUs)."""
        s = max(self.seconds, 1e-9)
        first = f"; first features written after {self.startup_s:.1f} s" if self.startup_s else ""
        return (
            f"throughput: {(self.done + self.failed) / s:.2f} videos/s, {self.clips / s:.1f} clips/s, "
            f"{self.frames / s:.0f} decoded frames/s over {self.seconds:.1f} s{first}"
        )


def plan_extraction(
    sources: list[VideoSource], out: str, retry_failed: bool = False
) -> tuple[list[VideoSource], list[VideoSource]]:
    """(to do, skipped): videos already ``ok`` in the store are skipped, ``failed`` ones too unless retried."""
    fs, root = filesystem_for(out)
    check_store_location(fs, root, out)  # a prefix holding something else is refused before any work
    if fs.get_file_info(f"{root}/videos").type.name != "Directory":
        return list(sources), []
    videos = FeatureStore(out).videos()
    status = dict(zip(videos["video_id"].to_pylist(), videos["status"].to_pylist(), strict=True))
    skip = {vid for vid, st in status.items() if st == "ok" or (st == "failed" and not retry_failed)}
    return [s for s in sources if s.video_id not in skip], [s for s in sources if s.video_id in skip]


def decode_segments(
    row: dict,
    *,
    clip_len: int,
    clip_stride: int,
    fps: float | None,
    clips_per_row: int,
    block_frames: int = DEFAULT_BLOCK_FRAMES,
) -> Iterator[dict]:
    """The segment rows of one video (stage 1); a failure becomes its last row, never an exception."""
    vid, uri = str(row["video_id"]), str(row["uri"])
    segment = 0
    crops: list[np.ndarray] = []
    starts: list[np.ndarray] = []
    ends: list[np.ndarray] = []

    def make_row(last: bool, **facts) -> dict:
        nonlocal segment, crops, starts, ends
        out = {
            "video_id": vid,
            "uri": uri,
            "segment": segment,
            "last": last,
            "status": "ok",
            "error": "",
            "fps": _UNKNOWN,
            "num_frames": -1,
            "duration_s": _UNKNOWN,
            "width": -1,
            "height": -1,
            "clips": np.concatenate(crops) if crops else np.zeros((0, clip_len, 112, 112, 3), np.uint8),
            "clip_start_s": np.concatenate(starts) if starts else np.zeros(0),
            "clip_end_s": np.concatenate(ends) if ends else np.zeros(0),
        }
        out.update(facts)
        segment, crops, starts, ends = segment + 1, [], [], []
        return out

    cutter = ClipCutter(clip_len, clip_stride)
    try:
        decoder = VideoDecoder(uri, fps=fps, block_frames=block_frames)  # URIs are read in place, never copied
        for block in decoder.blocks():
            for clips, s, e in cutter.push(center_crop(block.frames), block.start_s, block.end_s):
                crops.append(clips)
                starts.append(s)
                ends.append(e)
                if sum(len(c) for c in crops) >= clips_per_row:
                    yield make_row(False)
        for clips, s, e in cutter.finish():
            crops.append(clips)
            starts.append(s)
            ends.append(e)
        info = decoder.info
        expected = num_clips(info.num_frames, clip_len, clip_stride)
        if cutter.clips_cut != expected:
            raise DecodeError(f"cut {cutter.clips_cut} clips from {info.num_frames} frames, expected {expected}")
        yield make_row(
            True,
            fps=float(info.fps) if info.fps else _UNKNOWN,
            num_frames=int(info.num_frames),
            duration_s=float(info.duration_s) if info.duration_s is not None else _UNKNOWN,
            width=int(info.width or -1),
            height=int(info.height or -1),
        )
    except Exception as error:
        crops, starts, ends = [], [], []
        message = str(error) if isinstance(error, DecodeError) else f"{type(error).__name__}: {error}"
        yield make_row(True, status="failed", error=message.strip().splitlines()[0][:500] if message else "error")


class C3DActor:
    """Stage 2: one C3D network per actor; turns each segment's clips into features."""

    def __init__(
        self,
        weights: object,
        *,
        seed: int,
        layer: str,
        dtype: str,
        batch_size: int,
        compute_dtype: str,
        use_gpu: bool,
        threads: int,
    ) -> None:
        import ray
        import torch

        if isinstance(weights, ray.ObjectRef):
            weights = ray.get(weights)
        torch.set_num_threads(max(1, threads))
        device = "cuda" if use_gpu else "cpu"
        self.extractor = C3DFeatureExtractor(
            build_c3d(weights, seed=seed), layer=layer, device=device, dtype=compute_dtype, batch_size=batch_size
        )
        self.dtype = np.dtype(dtype)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        clips = list(batch.pop("clips"))
        sizes = [len(c) for c in clips]
        status, error = batch["status"].copy(), batch["error"].copy()
        features: list[np.ndarray] = []
        try:
            nonempty = [c for c in clips if len(c)]
            flat = self.extractor(np.concatenate(nonempty)) if nonempty else np.zeros((0, 4096), np.float32)
            if not np.isfinite(flat).all():
                raise FloatingPointError("C3D produced NaN or infinite features")
            flat = flat.astype(self.dtype)
            offsets = np.cumsum([0, *sizes])
            features = [flat[offsets[i] : offsets[i + 1]] for i in range(len(sizes))]
        except Exception as failure:  # the rows fail, the job goes on
            for i in range(len(sizes)):
                if status[i] == "ok":
                    status[i], error[i] = "failed", f"feature extraction: {type(failure).__name__}: {failure}"
            features = [np.zeros((0, 4096), self.dtype) for _ in sizes]
        batch["status"], batch["error"] = status, error
        batch["features"] = _object_array(features)
        return batch


def _object_array(arrays: list[np.ndarray]) -> np.ndarray:
    out = np.empty(len(arrays), dtype=object)
    for i, a in enumerate(arrays):
        out[i] = a
    return out


@dataclass
class _VideoState:
    next_segment: int = 0
    waiting: dict[int, dict] = field(default_factory=dict)
    error: str | None = None
    clips: int = 0


class SegmentWriter:
    """Stage 3: puts segments back together per video (in order) and writes them to the store.

    The store's writer seals a shard once it holds enough videos and none is half written.
    """

    def __init__(self, writer: FeatureStoreWriter, clip_len: int, clip_stride: int) -> None:
        self.writer = writer
        self.clip_len, self.clip_stride = clip_len, clip_stride
        self.clips_written = 0
        self._videos: dict[str, _VideoState] = {}

    def add(self, row: dict) -> VideoRecord | None:
        """Take one segment row; returns the video's record once its last segment is written."""
        vid = str(row["video_id"])
        state = self._videos.setdefault(vid, _VideoState())
        state.waiting[int(row["segment"])] = row
        record = None
        while state.next_segment in state.waiting:
            seg = state.waiting.pop(state.next_segment)
            state.next_segment += 1
            if seg["status"] != "ok":
                state.error = state.error or str(seg["error"])
            elif state.error is None and len(seg["features"]):
                feats = np.asarray(seg["features"])
                self.writer.add_clips(vid, feats, np.asarray(seg["clip_start_s"]), np.asarray(seg["clip_end_s"]))
                state.clips += len(feats)
                self.clips_written += len(feats)
            if bool(seg["last"]):
                record = self._finish(vid, seg, state)
        return record

    def _finish(self, vid: str, last: dict, state: _VideoState) -> VideoRecord:
        del self._videos[vid]
        num_frames = int(last["num_frames"])
        if state.error is None and state.clips != num_clips(num_frames, self.clip_len, self.clip_stride):
            state.error = f"wrote {state.clips} clips for {num_frames} frames"
        facts = {k: _known(last[k]) for k in ("fps", "num_frames", "duration_s", "width", "height")}
        if state.error is not None:
            record = VideoRecord(vid, str(last["uri"]), status="failed", error=state.error, **facts)
        else:
            record = VideoRecord(vid, str(last["uri"]), num_clips=state.clips, **facts)
        self.writer.finish_video(record)
        return record


def _known(value: object) -> object:
    if isinstance(value, (np.floating, float)):
        return None if float(value) == _UNKNOWN else float(value)
    if isinstance(value, (np.integer, int)):
        return None if int(value) < 0 else int(value)
    return value


def run_extraction(
    sources: list[VideoSource],
    out: str,
    config: C3DConfig,
    *,
    weights: dict | None,
    weights_sha256: str,
    resources: Resources = Resources(),
    retry_failed: bool = False,
    videos_per_shard: int = 64,
    block_frames: int = DEFAULT_BLOCK_FRAMES,
    on_video: Callable[[VideoRecord], None] | None = None,
    capacity_wait_s: float = DEFAULT_WAIT_S,
) -> ExtractionSummary:
    """Extract every video of ``sources`` not yet in the store at ``out``; Ray must be initialised (or is, locally).

    ``weights`` is a checked C3D state dict or None for seeded random weights (``weights_sha256`` names which).
    Failed videos get ``failed`` rows; the run goes on. ``on_video`` is called with each record as it is written.
    When the alive nodes cannot hold the C3D actors plus one decoding CPU for ``capacity_wait_s`` seconds, a
    ``pipeline.capacity.ClusterCapacityError`` names the missing resource (sealed shards stay; a rerun resumes).
    """
    start_ray()
    started = time.perf_counter()
    config = dataclasses.replace(config, compute_dtype=compute_dtype_on_workers(config.compute_dtype, resources))
    metadata = store_metadata(config, weights_sha256)
    summary = ExtractionSummary(compute_dtype=config.compute_dtype)
    todo, skipped = plan_extraction(sources, out, retry_failed)
    summary.skipped = len(skipped)
    writer = FeatureStoreWriter(out, metadata, videos_per_shard=videos_per_shard)  # refuses a store of another kind
    if not todo:
        summary.seconds = time.perf_counter() - started
        return summary
    dataset = _build_dataset(todo, config, metadata, weights, resources, block_frames)
    segments = SegmentWriter(writer, config.clip_len, config.clip_stride)
    with writer:
        for row in watch(dataset.iter_rows(), extraction_needs(resources), wait_s=capacity_wait_s):
            record = segments.add(row)
            if not summary.startup_s and segments.clips_written:
                summary.startup_s = time.perf_counter() - started
            if record is None:
                continue
            if record.status == "ok":
                summary.done += 1
                summary.clips += record.num_clips
                summary.frames += record.num_frames or 0
            else:
                summary.failed += 1
                summary.failures.append((record.video_id, record.error or ""))
            if on_video is not None:
                on_video(record)
    summary.seconds = time.perf_counter() - started
    return summary


def extraction_needs(resources: Resources) -> PipelineNeeds:
    """The C3D actor pool and, beside it, one CPU for decoding: without it the actors wait on decoding forever."""
    return PipelineNeeds("extraction", "C3D actor", max(1, resources.num_actors), resources.cpus_per_actor,
                         resources.num_gpus_per_actor, side_cpus=1.0, side="decoding tasks")


def _build_dataset(
    todo: list[VideoSource],
    config: C3DConfig,
    metadata: StoreMetadata,
    weights: dict | None,
    resources: Resources,
    block_frames: int,
):
    import ray

    use_gpu = resources.num_gpus_per_actor > 0
    batch_size = int(resources.batch_size)
    if batch_size < 1:
        raise InputError(f"--batch-size must be positive, not {batch_size}")
    decode_tasks = resources.decode_tasks
    if decode_tasks is None:
        cpus = int(ray.cluster_resources().get("CPU", 1))
        decode_tasks = max(1, cpus - int(round(resources.cpus_per_actor * resources.num_actors)))
    fps = None if config.fps == "native" else float(config.fps)
    items = [{"video_id": s.video_id, "uri": s.uri} for s in todo]
    dataset = ray.data.from_items(items, override_num_blocks=min(len(items), 4096))
    dataset = dataset.flat_map(
        decode_segments,
        fn_kwargs={
            "clip_len": config.clip_len,
            "clip_stride": config.clip_stride,
            "fps": fps,
            "clips_per_row": resources.clips_per_row or batch_size,
            "block_frames": block_frames,
        },
        compute=ray.data.TaskPoolStrategy(size=decode_tasks),
        num_cpus=1,
    )
    weights_arg = ray.put(weights) if weights is not None else None
    dataset = dataset.map_batches(
        C3DActor,
        batch_size=4,  # segments per call; their clips run in forward passes of batch_size
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=max(1, resources.num_actors)),
        num_gpus=resources.num_gpus_per_actor if use_gpu else None,
        num_cpus=resources.cpus_per_actor,
        fn_constructor_args=(weights_arg,),
        fn_constructor_kwargs={
            "seed": config.seed,
            "layer": config.layer,
            "dtype": metadata.dtype,
            "batch_size": batch_size,
            "compute_dtype": config.compute_dtype,
            "use_gpu": use_gpu,
            "threads": resources.torch_threads or max(1, int(resources.cpus_per_actor)),
        },
    )
    dataset.context.execution_options.preserve_order = True  # the writer takes one video at a time, in order
    return dataset


def _resolve_here(requested: str, use_gpu: bool) -> str:
    return resolve_compute_dtype(requested, "cuda" if use_gpu else "cpu")


def compute_dtype_on_workers(requested: str, resources: Resources) -> str:
    """``requested``, or for ``auto`` what it resolves to on a worker like the C3D actors (same CPUs and GPUs):
    the driver may run on another kind of machine (a head node without a GPU). Ray must be initialised."""
    if requested != "auto":
        return requested
    import ray

    use_gpu = resources.num_gpus_per_actor > 0
    probe = ray.remote(_resolve_here).options(num_cpus=min(1.0, resources.cpus_per_actor),
                                              num_gpus=resources.num_gpus_per_actor if use_gpu else 0)
    return ray.get(probe.remote(requested, use_gpu))


def default_resources(num_gpus_per_actor: float, num_actors: int | None, **overrides) -> Resources:
    """Resources with defaults that suit the hardware: one actor per GPU, or one CPU actor."""
    import ray

    if num_actors is None:
        gpus = ray.cluster_resources().get("GPU", 0) if num_gpus_per_actor > 0 else 0
        num_actors = max(1, int(gpus // num_gpus_per_actor)) if num_gpus_per_actor > 0 else 1
    values = {k: v for k, v in overrides.items() if v is not None}
    values.setdefault("batch_size", 64 if num_gpus_per_actor > 0 else 8)
    if num_gpus_per_actor <= 0:  # C3D on CPU: its threads take the node, decoding (a few % of the work) shares it
        nodes = [n["Resources"].get("CPU", 1) for n in ray.nodes() if n.get("Alive")] or [1]
        values.setdefault("torch_threads", max(1, int(min(nodes)) // num_actors))
    return Resources(num_actors=num_actors, num_gpus_per_actor=num_gpus_per_actor, **values)

