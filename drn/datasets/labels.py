"""Video labels: every labelled action of each video, for ranking a library whose annotations are incomplete.

Sentence annotations (Charades-STA) describe only some of each video's actions, so a correct moment in a video
whose sentence was never written counts as a miss. Labels list *all* the actions a video shows, as
``(label, start_s, end_s)``; ``drn.corpus`` scores results by them as well (the relevance convention).

Sources:

* the Charades metadata CSVs (``Charades_v1_{train,test}.csv``): column ``id`` and column ``actions``,
  ``c077 12.10 18.00;c079 11.80 17.30;...`` (class, start, end; may be empty). The published train CSV holds 7
  actions whose start is after their end: they are left out and counted in ``VideoLabels.notes``;
* a JSONL file, one action a line: ``{"video_id": str, "label": str, "start_s": number, "end_s": number}``
  (``labels.jsonl`` in a ``jsonl`` dataset's folder, beside ``train/val/test.jsonl``).
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from drn.datasets.reading import as_seconds, parse_json_line, read_lines, read_text
from drn.errors import InputError
from drn.pairs import GroundingPair
from drn.text.vocabulary import query_key

CHARADES_CSV_PATTERN = "Charades_v1_*.csv"
LABELS_FILE = "labels.jsonl"
JSONL_SPLIT_FILES = ("train.jsonl", "val.jsonl", "test.jsonl")

Moment = tuple[str, float, float]  # (video_id, start_s, end_s)


@dataclass(frozen=True)
class Action:
    """One labelled action of a video, in seconds."""

    label: str
    start_s: float
    end_s: float


def interval_iou(start: float, end: float, other_start: float, other_end: float) -> float:
    """Temporal IoU of two intervals (0 when they do not overlap)."""
    inter = min(end, other_end) - max(start, other_start)
    union = max(end, other_end) - min(start, other_start)
    return float(inter / union) if inter > 0 and union > 0 else 0.0


class VideoLabels:
    """Every labelled action of each video."""

    def __init__(self, actions: Mapping[str, Sequence[Action]], source: str = "", *,
                 lines: Mapping[str, tuple[str, int]] | None = None, notes: Sequence[str] = ()) -> None:
        self.actions: dict[str, tuple[Action, ...]] = {video: tuple(acts) for video, acts in actions.items()}
        self.source = source
        self.lines: dict[str, tuple[str, int]] = dict(lines or {})  # video -> (file, first line naming it)
        self.notes = list(notes)  # what reading left out
        self._spans: dict[str, dict[str, tuple[tuple[float, float], ...]]] = {}  # label -> video -> spans
        for video, acts in self.actions.items():
            for act in acts:
                by_video = self._spans.setdefault(act.label, {})
                by_video[video] = (*by_video.get(video, ()), (act.start_s, act.end_s))

    def __len__(self) -> int:
        return len(self.actions)

    def __repr__(self) -> str:
        count = sum(len(acts) for acts in self.actions.values())
        return f"VideoLabels({len(self.actions)} videos, {count} actions, source={self.source!r})"

    def video_ids(self) -> set[str]:
        return set(self.actions)

    def labels(self) -> set[str]:
        return set(self._spans)

    def videos_with(self, label: str) -> set[str]:
        """The videos holding ``label`` at any time."""
        return set(self._spans.get(label, ()))

    def holds(self, video_id: str, label: str) -> bool:
        return video_id in self._spans.get(label, ())

    def spans(self, video_id: str, label: str) -> tuple[tuple[float, float], ...]:
        """``(start_s, end_s)`` of every action of ``label`` in the video, in file order."""
        return self._spans.get(label, {}).get(video_id, ())

    def best_action(self, video_id: str, start_s: float, end_s: float) -> tuple[Action, float] | None:
        """The video's action overlapping ``[start_s, end_s]`` best and its temporal IoU (> 0); ties: the earlier
        action in file order."""
        best: tuple[Action, float] | None = None
        for act in self.actions.get(video_id, ()):
            iou = interval_iou(start_s, end_s, act.start_s, act.end_s)
            if iou > 0 and (best is None or iou > best[1]):
                best = (act, iou)
        return best

    def label_at(self, video_id: str, start_s: float, end_s: float) -> str | None:
        """The label of the action overlapping ``[start_s, end_s]`` best, or None (no labels, no overlap)."""
        best = self.best_action(video_id, start_s, end_s)
        return None if best is None else best[0].label

    def label_of(self, moments: Iterable[Moment]) -> str | None:
        """The label of a set of moments: ``label_at`` of each, majority vote over those that have one; ties go to
        the larger summed IoU, then the alphabetically first label; None when no moment has a label."""
        votes: dict[str, list[float]] = {}
        for video, start, end in moments:
            best = self.best_action(video, start, end)
            if best is not None:
                vote = votes.setdefault(best[0].label, [0.0, 0.0])
                vote[0] += 1
                vote[1] += best[1]
        if not votes:
            return None
        return min(votes, key=lambda label: (-votes[label][0], -votes[label][1], label))

    def text_labels(self, pairs: Sequence[GroundingPair]) -> dict[str, str | None]:
        """``query_key`` of each text of ``pairs`` -> the text's label (``label_of`` its annotated moments)."""
        moments: dict[str, list[Moment]] = {}
        for pair in pairs:
            moments.setdefault(query_key(pair.query), []).append((pair.video_id, pair.start_s, pair.end_s))
        return {key: self.label_of(found) for key, found in moments.items()}


def _charades_time(text: str, what: str, entry: str, video: str, path: Path, line: int) -> float:
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise InputError(f"video {video!r}: action {entry!r} has a {what} that is not a finite number",
                         path=path, line=line)
    if number < 0:
        raise InputError(f"video {video!r}: action {entry!r} has a negative {what}", path=path, line=line)
    return number


def read_charades_actions(csv_paths: Sequence[Path | str]) -> VideoLabels:
    """Every action of the Charades metadata CSVs (columns ``id`` and ``actions``); videos without actions are
    left out, and so are actions whose start is after their end (counted in ``notes``)."""
    actions: dict[str, list[Action]] = {}
    lines: dict[str, tuple[str, int]] = {}
    reversed_at: list[str] = []
    paths = [Path(p) for p in csv_paths]
    for path in paths:
        reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
        missing = {"id", "actions"} - set(reader.fieldnames or ())
        if missing:
            raise InputError(f"missing column(s) {', '.join(sorted(missing))} in the header", path=path, line=1)
        line = reader.line_num + 1
        for row in reader:
            video = (row["id"] or "").strip()
            if not video:
                raise InputError("empty field 'id'", path=path, line=line)
            if video in lines:
                first, first_line = lines[video]
                raise InputError(f"video {video!r} repeats {Path(first).name} line {first_line}", path=path, line=line)
            lines[video] = (str(path), line)
            found = []
            for entry in (row["actions"] or "").split(";"):
                fields = entry.split()
                if not fields:
                    continue
                if len(fields) != 3:
                    raise InputError(f"video {video!r}: action {entry.strip()!r} is not 'CLASS START END'",
                                     path=path, line=line)
                start = _charades_time(fields[1], "start", entry.strip(), video, path, line)
                end = _charades_time(fields[2], "end", entry.strip(), video, path, line)
                if start > end:
                    reversed_at.append(f"{path.name} line {line}")
                    continue
                found.append(Action(fields[0], start, end))
            if found:
                actions[video] = found
            line = reader.line_num + 1
    notes = []
    if reversed_at:
        shown = ", ".join(list(dict.fromkeys(reversed_at))[:5])
        notes.append(f"left out {len(reversed_at)} actions whose start is after their end ({shown})")
    return VideoLabels(actions, " + ".join(map(str, paths)), lines=lines, notes=notes)


def read_labels_jsonl(path: Path | str) -> VideoLabels:
    """Every action of a labels JSONL file, one a line: ``{"video_id", "label", "start_s", "end_s"}``."""
    path = Path(path)
    actions: dict[str, list[Action]] = {}
    lines: dict[str, tuple[str, int]] = {}
    for line, text in read_lines(path):
        record = parse_json_line(text, path, line)
        for field in ("video_id", "label", "start_s", "end_s"):
            if field not in record:
                raise InputError(f"missing field {field!r}", path=path, line=line)
        video, label = record["video_id"], record["label"]
        for field, value in (("video_id", video), ("label", label)):
            if not isinstance(value, str) or not value.strip():
                raise InputError(f"field {field!r} must be a non-empty string, got {value!r}", path=path, line=line)
        start = as_seconds(record["start_s"], "start_s", path, line)
        end = as_seconds(record["end_s"], "end_s", path, line)
        if start < 0:
            raise InputError(f"field 'start_s' must not be negative, got {start:g}", path=path, line=line)
        if start > end:
            raise InputError(f"start_s {start:g} is after end_s {end:g}", path=path, line=line)
        lines.setdefault(video, (str(path), line))
        actions.setdefault(video, []).append(Action(label, start, end))
    return VideoLabels(actions, str(path), lines=lines)


def read_labels(path: Path | str) -> VideoLabels:
    """A labels file by its suffix: ``.csv`` (Charades metadata, column ``actions``) or ``.jsonl``."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return read_charades_actions([path])
    if suffix == ".jsonl":
        return read_labels_jsonl(path)
    raise InputError("labels must be a Charades metadata .csv or a .jsonl file (one action a line)", path=path)


def check_label_videos(labels: VideoLabels, known: Collection[str], where: str) -> None:
    """InputError naming the file and line of the first labelled video not in ``known``, with how many are."""
    known = set(known)
    unknown = [video for video in labels.actions if video not in known]
    if not unknown:
        return
    path, line = labels.lines.get(unknown[0], (labels.source or None, None))
    plural = "s" if len(unknown) != 1 else ""
    raise InputError(f"video {unknown[0]!r} is in no annotation file of {where} ({len(unknown)} unknown video{plural})",
                     path=path, line=line)


def jsonl_annotated_videos(folder: Path, also: Iterable[Path] = ()) -> set[str]:
    """Every ``video_id`` named in a jsonl dataset folder's ``train/val/test.jsonl`` (and the files ``also``)."""
    videos: set[str] = set()
    for path in dict.fromkeys([*(folder / name for name in JSONL_SPLIT_FILES), *also]):
        if not path.is_file():
            continue
        for line, text in read_lines(path):
            video = parse_json_line(text, path, line).get("video_id")
            if isinstance(video, str):
                videos.add(video)
    return videos


def _has_actions_column(path: Path) -> bool:
    with path.open(newline="", encoding="utf-8-sig", errors="replace") as handle:
        header = next(csv.reader(handle), [])
    return "actions" in (name.strip() for name in header)


def dataset_labels(dataset: str, annotations: str | os.PathLike) -> VideoLabels | None:
    """The labels a dataset's annotations folder ships, or None: ``charades_sta``: the actions of its
    ``Charades_v1_*.csv``; ``jsonl``: its ``labels.jsonl``, whose videos must all be in its ``train/val/test.jsonl``."""
    path = Path(annotations)
    folder = path if path.is_dir() else path.parent
    if dataset == "charades_sta":
        csvs = [p for p in sorted(folder.glob(CHARADES_CSV_PATTERN)) if _has_actions_column(p)]
        return read_charades_actions(csvs) if csvs else None
    if dataset == "jsonl":
        source = folder / LABELS_FILE
        if not source.is_file():
            return None
        labels = read_labels_jsonl(source)
        given = [path] if path.is_file() and path != source else []
        check_label_videos(labels, jsonl_annotated_videos(folder, given), str(folder))
        return labels
    return None
