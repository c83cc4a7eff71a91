"""Finding a split's source file from ``--annotations`` (the dataset's folder, or one of its files)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from drn.errors import InputError


def resolve_source(annotations: str | Path, source_name: str, names: Mapping[str, str]) -> Path:
    """The file holding split ``source_name``.

    ``annotations`` is the dataset's folder (the file is ``names[source_name]`` inside it) or a file, which is
    taken as the split's source unless its name is another split's file name (that would be ambiguous).
    """
    path = Path(annotations)
    if path.is_dir():
        source = path / names[source_name]
        if not source.is_file():
            raise InputError(f"no {names[source_name]} in the annotations folder", path=path)
        return source
    if path.is_file():
        for other, file_name in names.items():
            if path.name == file_name and other != source_name:
                raise InputError(
                    f"this is the {other!r} file but split {source_name!r} was asked for; "
                    "pass the dataset's folder or the matching file",
                    path=path,
                )
        return path
    raise InputError("annotations path does not exist", path=path)


def check_split(dataset: str, split: str, splits: tuple[str, ...]) -> None:
    if split not in splits:
        raise InputError(f"unknown split {split!r} for dataset {dataset}; choose one of {', '.join(splits)}")
