"""Dataset loaders: every supported dataset's splits as clean ``GroundingPair`` lists with a load report.

``load_split("charades_sta", "/data/charades_sta", "test")`` -> ``LoadedSplit(pairs, report)``.
Names: ``charades_sta``, ``activitynet``, ``tacos``, ``jsonl`` (own data). See docs/datasets.md.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from drn.datasets import activitynet, charades_sta, jsonl, tacos
from drn.datasets.cleaning import LoadedSplit, LoadReport, RawPair, clean_pairs, normalize_query
from drn.errors import InputError

DATASETS: dict[str, ModuleType] = {module.NAME: module for module in (charades_sta, activitynet, tacos, jsonl)}

__all__ = [
    "DATASETS",
    "LoadReport",
    "LoadedSplit",
    "RawPair",
    "clean_pairs",
    "dataset_names",
    "load_split",
    "normalize_query",
    "options_of",
    "splits_of",
]


def dataset_names() -> list[str]:
    return list(DATASETS)


def _module(dataset: str) -> ModuleType:
    if dataset not in DATASETS:
        raise InputError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[dataset]


def splits_of(dataset: str) -> tuple[str, ...]:
    """The split names a dataset accepts."""
    return _module(dataset).SPLITS


def options_of(dataset: str) -> tuple[str, ...]:
    """The keyword options a dataset's loader accepts (e.g. ``val_fraction``, ``durations``)."""
    loader: Callable[..., LoadedSplit] = _module(dataset).load
    params = inspect.signature(loader).parameters.values()
    return tuple(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)


def load_split(dataset: str, annotations: str | Path, split: str, **options: Any) -> LoadedSplit:
    """Load split ``split`` of ``dataset`` from ``annotations`` (its folder, or a file where unambiguous)."""
    module = _module(dataset)
    unknown = sorted(set(options) - set(options_of(dataset)))
    if unknown:
        allowed = ", ".join(options_of(dataset)) or "none"
        raise InputError(f"dataset {dataset} has no option(s) {', '.join(unknown)} (options: {allowed})")
    return module.load(annotations, split, **options)
