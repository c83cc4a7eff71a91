"""What the demo can vary (``DemoSettings``), where each step writes (``DemoPaths``) and the output folder's guard."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drn.errors import InputError
from drn.store.object_store import check_writable, is_uri

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO_CONFIG = REPO_ROOT / "configs" / "demo.yaml"
DEFAULT_OUT = Path("demo_output")
MARKER = "demo.json"
OWNED = ("library", "features", "runs", "eval", "lancedb", "queries.txt", MARKER)
RUN_NAME = "demo"


@dataclass(frozen=True)
class DemoSettings:
    """Everything the demo can vary. The defaults take a few minutes on 2 CPU cores (docs/demo.md)."""

    out: Path = DEFAULT_OUT
    size: int = 60  # videos in the synthetic library (cross-video ranks need this many to generalise)
    seed: int = 0
    min_duration_s: float = 12.0
    max_duration_s: float = 20.0
    video_fps: float = 25.0  # the frame rate the videos are written at
    fps: float = 8.0  # extraction resamples to this rate before cutting clips
    clip_stride: int = 16  # frames between clip starts (C3D clips are 16 frames)
    weights: str = "random"  # or the path of the Sports-1M c3d.pickle
    config: Path = DEMO_CONFIG
    overrides: tuple[str, ...] = ()  # "key=value" config overrides
    num_workers: int = 1  # Ray Train workers
    use_gpu: bool = False
    force: bool = False
    progress: bool = True

    def check(self) -> None:
        """A SettingError (an InputError) for settings that cannot work, naming the setting."""
        if self.size < 1:
            raise SettingError(f"{{size}} must be at least 1 (the number of videos), not {self.size}")
        if self.size < 5:
            raise SettingError(f"{{size}} must be at least 5 so that train, val and test each get a video, "
                               f"not {self.size}")
        if not 0 < self.min_duration_s <= self.max_duration_s:
            raise SettingError("durations must satisfy 0 < {min_duration_s} <= {max_duration_s}")
        if not self.fps > 0:
            raise SettingError(f"{{fps}} must be positive, not {self.fps}")
        if self.clip_stride < 1:
            raise SettingError(f"{{clip_stride}} must be positive, not {self.clip_stride}")
        if self.num_workers < 1:
            raise SettingError(f"{{num_workers}} must be at least 1, not {self.num_workers}")
        if not Path(self.config).is_file():
            raise InputError("no such config file", path=self.config)
        if self.weights != "random" and not is_uri(self.weights) and not Path(self.weights).is_file():
            raise InputError("no such C3D weights file (give the Sports-1M c3d.pickle, or 'random')",
                             path=self.weights)

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON values (paths as text)."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()}


SETTINGS = frozenset(field.name for field in dataclasses.fields(DemoSettings))


class SettingError(InputError):
    """Bad ``DemoSettings``. ``template`` writes each setting as ``{name}``: the message names the setting, and a
    command line can name its flag instead (:meth:`worded`)."""

    def __init__(self, template: str, *, path: object | None = None) -> None:
        self.template = template
        super().__init__(self.worded({}), path=path)

    def worded(self, names: Mapping[str, str]) -> str:
        """The message (without its path) with each ``{setting}`` written as ``names[setting]``, else its name."""
        def name(match: re.Match) -> str:
            setting = match.group(1)
            return names.get(setting, setting) if setting in SETTINGS else match.group(0)

        return re.sub(r"\{(\w+)\}", name, self.template)


@dataclass(frozen=True)
class DemoPaths:
    """Where each step writes, under one output folder."""

    out: Path

    @property
    def library(self) -> Path:
        return self.out / "library"

    @property
    def videos(self) -> Path:
        return self.library / "videos"

    @property
    def annotations(self) -> Path:
        return self.library / "annotations"

    @property
    def features(self) -> Path:
        return self.out / "features"

    @property
    def runs(self) -> Path:
        return self.out / "runs"

    @property
    def eval(self) -> Path:
        return self.out / "eval"

    @property
    def db(self) -> Path:
        return self.out / "lancedb"

    @property
    def queries(self) -> Path:
        return self.out / "queries.txt"

    @property
    def marker(self) -> Path:
        return self.out / MARKER


def prepare_output(out: str | os.PathLike, force: bool) -> DemoPaths:
    """Check (and with ``force`` clear the demo's own parts of) the output folder; InputError when unusable.

    An existing non-empty folder is refused without ``force``; with it, only the demo's own entries (``OWNED``)
    are removed, so other files there survive. Nothing is removed before every check has passed.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError("the output path exists and is not a folder", path=out)
    existing = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if existing and not force:
        raise SettingError(f"the output folder is not empty ({len(existing)} entries, e.g. {existing[0]!r}); "
                           "{force} replaces the demo's files in it, or choose another output folder ({out})",
                           path=out)
    check_writable(out, "output folder")
    if force:
        for name in OWNED:
            target = out / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
    return DemoPaths(out)
