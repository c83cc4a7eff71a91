"""The DRN configuration: one dataclass tree, loaded from YAML presets with ``key=value`` overrides.

Every field has a default (the authors' Charades-STA setting, DESIGN.md section 5). A preset in ``configs/``
overrides any subset; ``--set model.num_segments=64`` overrides one field by its dotted name. Unknown keys,
in a file or an override, are an :class:`~drn.errors.InputError` naming the key.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any

import yaml

from drn.errors import InputError

POSITIVE_MODES = ("all", "center", "random", "half")
QUALITY_MODES = ("iou", "centerness", "none")
WORD_SOURCES = ("minilm", "glove")


@dataclass
class TextConfig:
    """How queries become word vectors."""

    word_source: str = "minilm"  # "minilm" (offline default) or "glove" (needs glove_path)
    glove_path: str | None = None
    max_words: int = 30  # the encoder's limit on words per query
    truncate_long_queries: bool = False  # False: a longer query is an InputError; True: keep the first max_words
    min_word_count: int = 1  # closed vocabularies: training words seen fewer times map to UNK
    lowercase: bool = True
    open_vocabulary: bool = True  # minilm: spell every word in WordPiece pieces at encoding time (drn.text.vocabulary)


@dataclass
class ModelConfig:
    """Sizes and ablation switches of the network (DESIGN.md section 5; paper Tables 4-6)."""

    feature_dim: int = 4096  # D
    num_segments: int = 32  # T
    word_dim: int = 384  # set from the word vectors when the model is built
    lstm_hidden: int = 512  # per direction
    attention_dim: int = 512  # W3: 2*2*lstm_hidden -> attention_dim
    location_dim: int = 256
    level_channels: list[int] = field(default_factory=lambda: [256, 512, 1024])
    fpn_channels: int = 512
    iou_channels: list[int] = field(default_factory=lambda: [512, 256])
    use_location_embedding: bool = True
    multi_level_fusion: bool = True  # False: the query is fused at level 0 only
    same_query_all_levels: bool = False  # MLF-Same: one attention for all levels
    quality: str = "iou"  # "iou" head, "centerness" (same head, centerness target) or "none" (m alone)
    head_init_std: float = 0.01
    match_prior: float = 0.01
    retrieval_dim: int = 0  # R > 0 adds the retrieval stage (drn.retrieval: query and cells in R-d); 0: none


@dataclass
class TargetConfig:
    """Which locations are positive (DESIGN.md section 5, paper Table 4)."""

    level_ranges: list[list[float]] = field(default_factory=lambda: [[0.0, 6.0], [5.6, 11.0], [11.0, math.inf]])
    ranges_for_segments: int = 32  # the T the ranges are given for; they scale by T / ranges_for_segments
    positives: str = "all"  # "all", "center" (one, nearest the centre), "random" (one at random), "half"


@dataclass
class LossConfig:
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    iou_head_min_target: float = 0.0  # authors' code: 0.9 (only locations whose IoU target exceeds it)


@dataclass
class DecodeConfig:
    top_per_level: int = 16  # candidates kept per level before NMS
    nms_threshold: float = 0.5  # >= 1 disables NMS
    top_n: int = 5


@dataclass
class StageConfig:
    epochs: int = 10
    lr: float = 1e-3


@dataclass
class NegativesConfig:
    """Negative pairs (a query with a video that does not hold it): what makes scores comparable across videos.

    Each positive row of a batch gets up to ``per_positive`` negative rows: its query with other videos, never a
    video annotated with the same text (``drn.text.query_key``) or a near paraphrase (MiniLM sentence cosine >=
    ``paraphrase_cosine``). ``hard_fraction`` of them are hard negatives (videos of the nearest other texts of the
    split), the rest other videos of the batch. 0 turns them off and trains exactly as without them.

    Annotations miss moments, so a video not annotated with a text may still show it. ``use_labels``: where the
    dataset labels every action of its videos (``drn.datasets.labels``), a video showing the text's labelled action
    is never its negative. ``score_guard``: in each step, a negative row whose best matching score reaches its
    positive row's is left out of the loss, once the positive's best score is at least ``guard_min_score`` (the
    model has learned to find it); for data without labels.
    """

    per_positive: int = 2
    paraphrase_cosine: float = 0.9
    hard_fraction: float = 0.5
    use_labels: bool = True
    score_guard: bool = False
    guard_min_score: float = 0.5


@dataclass
class TrainConfig:
    batch_size: int = 32
    grad_clip_norm: float = 5.0
    seed: int = 0
    num_workers: int = 0  # DataLoader workers
    select_metric: str = "R@1,IoU=0.5"  # validation metric that picks each stage's checkpoint, or "last"
    val_fraction: float = 0.1  # carved from train (seeded) when the dataset has no validation split
    stage1: StageConfig = field(default_factory=lambda: StageConfig(epochs=10, lr=1e-3))
    stage2: StageConfig = field(default_factory=lambda: StageConfig(epochs=5, lr=1e-5))
    stage3: StageConfig = field(default_factory=lambda: StageConfig(epochs=5, lr=1e-6))
    negatives: NegativesConfig = field(default_factory=NegativesConfig)


@dataclass
class RetrievalConfig:
    """The retrieval stage (stage 4, when model.retrieval_dim > 0): query and video cells in one space."""

    cell_widths: list[int] = field(default_factory=lambda: [2, 4])  # grid segments; each every max(1, w // 2)
    temperature: float = 0.05  # of the contrastive (InfoNCE) loss
    sampled_negatives: int = 32  # videos per step drawn from the training videos, besides the batch's
    positive_iou: float = 0.5  # cells at this IoU with the moment are positives (the best cell always is)
    epochs: int = 10  # (videos holding a query's text or a near paraphrase: train.negatives.paraphrase_cosine)
    lr: float = 3e-3
    select_metric: str = "video R@10"  # validation metric that picks the stage's epoch


@dataclass
class DRNConfig:
    """The whole configuration; ``to_dict``/``from_dict`` round-trip through checkpoints and YAML."""

    name: str = "charades_sta"
    dataset: str = "charades_sta"
    text: TextConfig = field(default_factory=TextConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    targets: TargetConfig = field(default_factory=TargetConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)

    def __post_init__(self) -> None:
        validate(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> DRNConfig:
        return _build(cls, _without_retired_keys(data, source), source, prefix="")

    def scaled_level_ranges(self) -> list[tuple[float, float]]:
        """Level ranges in grid units of this config's T."""
        scale = self.model.num_segments / self.targets.ranges_for_segments
        return [(float(lo) * scale, float(hi) * scale) for lo, hi in self.targets.level_ranges]


# Keys that configs and checkpoints of earlier versions may hold, with the value that changed nothing. A file with
# that value still loads; another value is refused by name.
RETIRED_KEYS = {
    # The video-level relevance score was measured and removed: a few points of corpus R@1 for up to 14 points of
    # within-video R@1 (benchmarks/RESULTS.md, "Negative pairs").
    ("model", "video_relevance"): False,
}


def _without_retired_keys(data: dict[str, Any], source: str) -> dict[str, Any]:
    data = dict(data)
    for (section, key), inert in RETIRED_KEYS.items():
        values = data.get(section)
        if not isinstance(values, dict) or key not in values:
            continue
        if values[key] != inert:
            raise InputError(f"{section}.{key} is no longer supported (it was removed; only {inert!r} loads): "
                             "retrain without it", path=source)
        data[section] = {k: v for k, v in values.items() if k != key}
    return data


def validate(config: DRNConfig) -> None:
    """Raise InputError for values that cannot work, naming the field."""
    checks = [
        (config.model.quality in QUALITY_MODES, f"model.quality must be one of {QUALITY_MODES}"),
        (config.targets.positives in POSITIVE_MODES, f"targets.positives must be one of {POSITIVE_MODES}"),
        (config.text.word_source in WORD_SOURCES, f"text.word_source must be one of {WORD_SOURCES}"),
        (config.text.word_source != "glove" or bool(config.text.glove_path),
         "text.glove_path is required when text.word_source is glove"),
        (config.model.num_segments >= 4 and config.model.num_segments % 4 == 0,
         f"model.num_segments must be a multiple of 4, not {config.model.num_segments}"),
        (len(config.model.level_channels) == 3, "model.level_channels must list 3 sizes"),
        (len(config.model.iou_channels) == 2, "model.iou_channels must list 2 sizes"),
        (len(config.targets.level_ranges) == 3, "targets.level_ranges must list 3 [low, high] ranges"),
        (config.text.max_words >= 1, "text.max_words must be at least 1"),
        (config.train.batch_size >= 1, "train.batch_size must be at least 1"),
        (config.model.feature_dim >= 1, "model.feature_dim must be at least 1"),
        (config.train.negatives.per_positive >= 0,
         f"train.negatives.per_positive must be 0 (off) or more, not {config.train.negatives.per_positive}"),
        (0.0 <= config.train.negatives.hard_fraction <= 1.0,
         f"train.negatives.hard_fraction must be in [0, 1], not {config.train.negatives.hard_fraction}"),
        (0.0 < config.train.negatives.paraphrase_cosine <= 1.0,
         f"train.negatives.paraphrase_cosine must be in (0, 1], not {config.train.negatives.paraphrase_cosine}"),
        (0.0 <= config.train.negatives.guard_min_score < 1.0,
         f"train.negatives.guard_min_score must be in [0, 1), not {config.train.negatives.guard_min_score}"),
        *((getattr(config.train, f"stage{n}").epochs >= 1,
           f"train.stage{n}.epochs must be at least 1, not {getattr(config.train, f'stage{n}').epochs} (to skip a "
           "stage, leave it out of jobs.train --stages)") for n in (1, 2, 3)),
        (config.model.retrieval_dim >= 0, "model.retrieval_dim must be 0 (no retrieval stage) or more"),
        (bool(config.retrieval.cell_widths) and all(
            isinstance(w, int) and 1 <= w <= config.model.num_segments for w in config.retrieval.cell_widths),
         f"retrieval.cell_widths must list widths from 1 to model.num_segments ({config.model.num_segments})"),
        (config.retrieval.temperature > 0, "retrieval.temperature must be positive"),
        (config.retrieval.sampled_negatives >= 0, "retrieval.sampled_negatives must be 0 or more"),
    ]
    for ok, message in checks:
        if not ok:
            raise InputError(message)


def _build(cls: type, data: Any, source: str, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise InputError(f"'{prefix.rstrip('.') or 'config'}' must be a mapping, not {type(data).__name__}",
                         path=source)
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in known:
            raise InputError(f"unknown config key '{prefix}{key}' (known: {', '.join(known)})", path=source)
        sub = _dataclass_type(cls, key)
        if sub is not None:
            kwargs[key] = _build(sub, value, source, f"{prefix}{key}.")
        else:
            kwargs[key] = _check_scalar(known[key], _coerce(value), f"{prefix}{key}", source)
    return cls(**kwargs)


def _check_scalar(field: dataclasses.Field, value: Any, name: str, source: str) -> Any:
    """Convert a number given as text (YAML reads ``1e-3`` as a string) and refuse values of the wrong kind."""
    default = field.default
    if isinstance(default, bool) or default is None or default is dataclasses.MISSING:
        if isinstance(default, bool) and not isinstance(value, bool):
            raise InputError(f"config key '{name}' must be true or false, not {value!r}", path=source)
        return value
    if isinstance(default, (int, float)) and not isinstance(value, bool):
        kind = float if isinstance(default, float) else int
        try:
            number = kind(value) if isinstance(value, str) else value
        except ValueError:
            number = None
        if isinstance(number, (int, float)) and (kind is float or float(number).is_integer()):
            return kind(number)
        raise InputError(f"config key '{name}' must be a number, not {value!r}", path=source)
    return value


def _dataclass_type(cls: type, name: str) -> type | None:
    default = next(f for f in dataclasses.fields(cls) if f.name == name)
    if default.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = default.default_factory()  # type: ignore[misc]
        return type(value) if dataclasses.is_dataclass(value) else None
    return None


def _coerce(value: Any) -> Any:
    if isinstance(value, str) and value.lower() in ("inf", "+inf", ".inf"):
        return math.inf
    if isinstance(value, list):
        return [_coerce(v) for v in value]
    return value


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | tuple[str, ...] = ()) -> DRNConfig:
    """A config from a YAML preset (or the defaults when ``path`` is None) with ``key=value`` overrides."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = os.fspath(path)
        try:
            with open(path) as fh:
                data = yaml.safe_load(fh) or {}
        except FileNotFoundError as err:
            raise InputError("config file not found", path=source) from err
        except yaml.YAMLError as err:
            raise InputError(f"not valid YAML: {err}".splitlines()[0], path=source) from err
    for item in overrides:
        apply_override(data, item)
    return DRNConfig.from_dict(data, source=source)


def overridden_keys(overrides: list[str] | tuple[str, ...]) -> set[str]:
    """The dotted keys that ``key=value`` overrides set (``{"model.feature_dim"}`` for ``model.feature_dim=512``)."""
    return {item.split("=", 1)[0].strip() for item in overrides if "=" in item}


def apply_override(data: dict[str, Any], item: str) -> None:
    """Set ``a.b.c=value`` (value parsed as YAML) in a nested dict; unknown keys fail later, by name."""
    if "=" not in item:
        raise InputError(f"override {item!r} must look like key=value")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise InputError(f"override {item!r} has an empty key part")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise InputError(f"override {item!r}: '{part}' is not a section")
    node[parts[-1]] = value


def model_differences(a: DRNConfig, b: DRNConfig) -> list[str]:
    """``'model.x: a vs b'`` for every model-shaping field where two configs disagree."""
    out = []
    for section in ("model",):
        da, db = dataclasses.asdict(getattr(a, section)), dataclasses.asdict(getattr(b, section))
        out += [f"{section}.{k}: {da[k]!r} vs {db[k]!r}" for k in da if da[k] != db[k]]
    if a.text.word_source != b.text.word_source:
        out.append(f"text.word_source: {a.text.word_source!r} vs {b.text.word_source!r}")
    return out
