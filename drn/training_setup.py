"""Everything a training run needs before its first step: splits, vocabulary, word vectors, grids, datasets.

Shared by ``jobs.train`` (plain, one process) and a Ray Train runner (``moments.train.driver``), which would build the
same ``TrainingData`` and hand its datasets to its own data loaders.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from drn.checkpoint import check_feature_dim, model_from_payload, read_checkpoint
from drn.config import DRNConfig, overridden_keys
from drn.data import GroundingDataset, PairCollator, collate, load_grids, usable_pairs
from drn.datasets import load_split, options_of
from drn.datasets.labels import VideoLabels, dataset_labels
from drn.errors import InputError
from drn.model import DRN, new_model
from drn.negatives import NegativeFilter, build_negative_filter
from drn.pairs import GroundingPair
from drn.store.features import FeatureStore
from drn.text.vocabulary import OpenVocabulary, Vocabulary, vocabulary_and_vectors

EVAL_SPLITS = {"activitynet": ("val_1", "val_2")}  # (validation, test); others: ("val", "test")


def eval_splits(dataset: str) -> tuple[str, str]:
    return EVAL_SPLITS.get(dataset, ("val", "test"))


@dataclass
class TrainingData:
    config: DRNConfig
    vocab: Vocabulary | OpenVocabulary
    word_vectors: np.ndarray
    train: GroundingDataset
    val: GroundingDataset
    test: GroundingDataset | None
    dropped: dict[str, int] = field(default_factory=dict)  # split -> pairs without features
    negatives: NegativeFilter | None = None  # the training split's negative-pair filter (None: no negatives)
    labels: VideoLabels | None = None  # every labelled action of the dataset's videos, where it has them

    def checkpoint_facts(self) -> dict[str, Any]:
        """What the final checkpoint records about this data: training durations, the negative-pair filter."""
        facts: dict[str, Any] = {"train_duration_s": self.train_durations()}
        if self.negatives is not None:
            facts["negatives"] = self.negatives.report.to_dict()
        return facts

    def new_model(self) -> DRN:
        """A fresh model for this data's vocabulary and config."""
        return new_model(self.config, self.vocab)

    def collator(self, split: str) -> PairCollator | Callable[[list[dict]], dict]:
        """How batches of ``split`` are put together: with negative rows for training when the config asks."""
        if split == "train" and self.negatives is not None:
            negatives = self.config.train.negatives
            return PairCollator(self.negatives, negatives.per_positive, self.config.train.seed,
                                negatives.hard_fraction, self.train.grids)
        return collate

    def train_durations(self) -> dict[str, float]:
        """Median and 95th percentile of the training videos' durations (seconds), recorded in checkpoints so
        that grounding can cut long videos into windows of the length the model was trained on."""
        durations = np.array(sorted({p.video_id: p.duration_s for p in self.train.pairs}.values()))
        return {"median": float(np.median(durations)), "p95": float(np.percentile(durations, 95))}

    def loader(self, split: str, shuffle: bool | None = None) -> DataLoader:
        dataset = getattr(self, split)
        shuffle = split == "train" if shuffle is None else shuffle
        generator = torch.Generator().manual_seed(self.config.train.seed)
        return DataLoader(dataset, batch_size=self.config.train.batch_size, shuffle=shuffle,
                          collate_fn=self.collator(split), num_workers=self.config.train.num_workers,
                          generator=generator)


def adopt_store_feature_dim(config: DRNConfig, feature_dim: int, overrides: Sequence[str] = (),
                            source: object = None) -> str | None:
    """Give ``config`` the feature store's dimension, the one source of ``model.feature_dim`` for training.

    A preset's ``model.feature_dim`` is a default: a store of another dimension replaces it (the checkpoint
    records the store's). Only an explicit ``--set model.feature_dim=N`` that disagrees with the store is an
    InputError. Returns a notice when the preset's value was replaced, else None.
    """
    feature_dim = int(feature_dim)
    if config.model.feature_dim == feature_dim:
        return None
    if "model.feature_dim" in overridden_keys(overrides):
        raise InputError(
            f"--set model.feature_dim={config.model.feature_dim} disagrees with the feature store: features are "
            f"{feature_dim}-d but the model expects {config.model.feature_dim}-d; leave model.feature_dim out to "
            "train on the store's dimension", path=source)
    preset = config.model.feature_dim
    config.model.feature_dim = feature_dim
    return f"model.feature_dim: {feature_dim} (the feature store's dimension; the config said {preset})"


def load_pairs(config: DRNConfig, annotations: str | os.PathLike, split: str, durations: dict[str, float],
               dataset: str | None = None) -> list[GroundingPair]:
    """One split, with validation carved from train (and excluded from it) where the dataset has no val file."""
    name = dataset or config.dataset
    wanted = {"exclude_val": True, "val_fraction": config.train.val_fraction, "val_seed": config.train.seed,
              "durations": durations}
    options = {k: v for k, v in wanted.items() if k in options_of(name)}
    if split != "train":
        options.pop("exclude_val", None)
    return load_split(name, annotations, split, **options).pairs


def prepare_training_data(
    config: DRNConfig,
    features: str | os.PathLike,
    annotations: str | os.PathLike,
    dataset: str | None = None,
    resume_from: str | os.PathLike | None = None,
    with_test: bool = True,
    progress: bool = False,
) -> TrainingData:
    """Load splits, drop pairs without features, build (or restore) the vocabulary, pool the grids."""
    store = FeatureStore(features)
    check_feature_dim(config, store.metadata.feature_dim, os.fspath(features))
    durations = store.durations()
    name = dataset or config.dataset
    val_split, test_split = eval_splits(name)
    splits = {"train": "train", "val": val_split, **({"test": test_split} if with_test else {})}
    pairs, dropped = {}, {}
    for role, split in splits.items():
        selection = usable_pairs(load_pairs(config, annotations, split, durations, name), store)
        pairs[role], dropped[role] = selection.kept, len(selection.dropped)
        if not selection.kept:
            raise InputError(f"no {split} pair has features in the store", path=os.fspath(features))
    if resume_from is not None:
        _, _, vocab = model_from_payload(read_checkpoint(resume_from), resume_from)
        vectors = vocab.matrix
    else:
        vocab, vectors = vocabulary_and_vectors([p.query for p in pairs["train"]], config.text)
    labels = dataset_labels(name, annotations) if config.train.negatives.use_labels else None
    negatives = None
    if config.train.negatives.per_positive > 0:
        negatives = build_negative_filter(pairs["train"], config.train.negatives.paraphrase_cosine, labels=labels)
    videos = {p.video_id for role in pairs for p in pairs[role]}
    grids = load_grids(store, sorted(videos), config.model.num_segments, progress)
    made = {role: GroundingDataset(pairs[role], grids, vocab, config) for role in pairs}
    return TrainingData(config, vocab, vectors, made["train"], made["val"], made.get("test"), dropped, negatives,
                        labels)
