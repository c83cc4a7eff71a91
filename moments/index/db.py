"""What every LanceDB table of the project shares: the connection (with the S3 settings of ``drn.store``), SQL
literals for filters, the writability check and the default location."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import lancedb
import numpy as np

from drn.errors import InputError
from drn.store.object_store import check_writable, lancedb_storage_options, local_path


def connect(uri: str | os.PathLike, storage_options: dict[str, str] | None = None) -> Any:
    """A LanceDB connection to ``uri`` (a folder or an object-store URI); ``s3://`` gets the AWS environment's
    endpoint, region and timeouts (``drn.store.object_store.lancedb_storage_options``) unless options are given."""
    text = os.fspath(uri)
    options = storage_options if storage_options is not None else lancedb_storage_options(text)
    try:
        return lancedb.connect(text, storage_options=options)
    except OSError as error:
        raise InputError(f"cannot open the LanceDB location: {error}", path=text) from None


def local_folder(uri: str | os.PathLike) -> Path | None:
    """The local folder of a LanceDB URI (None for an object store); InputError when it is a file."""
    local = local_path(uri)
    if local is None:
        return None
    folder = Path(local)
    if folder.exists() and not folder.is_dir():
        raise InputError("the LanceDB location is a file, not a folder", path=os.fspath(uri))
    return folder


def check_db_writable(uri: str | os.PathLike) -> None:
    """InputError before any work when a local LanceDB folder cannot be created or written."""
    check_writable(uri, "LanceDB location")


def sql_literal(value: str | int) -> str:
    """A SQL literal for a LanceDB filter: strings quoted with ' doubled, integers as they are."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    return "'" + str(value).replace("'", "''") + "'"


def in_list(column: str, values: Iterable[str | int]) -> str:
    """``column IN (...)`` for a LanceDB filter."""
    return f"{column} IN ({', '.join(sql_literal(value) for value in values)})"


def default_db_uri() -> str:
    """The LanceDB URI used when none is given: $DRN_DB, else ./lancedb."""
    return os.environ.get("DRN_DB", "lancedb")


class DescribedTable:
    """A LanceDB table that its schema metadata describes (``info``, None while there is no table): opened when it
    is there (reading creates nothing), created on demand. ``missing`` is what the error says to do when it is not
    there."""

    missing = "build it with python -m jobs.index_library"

    def __init__(self, uri: str | os.PathLike, table: str, read_info: Callable[[Any, str], Any]) -> None:
        self.uri = os.fspath(uri)
        self.name = table
        self._db: Any = None
        self._table: Any = None
        local = local_folder(self.uri)
        if local is None or local.is_dir():
            try:
                self._table = self._connect().open_table(table)
            except (ValueError, FileNotFoundError):
                self._table = None
        self.info = None if self._table is None else read_info(self._table.schema.metadata,
                                                               f"{self.uri} (table {table})")

    def _connect(self) -> Any:
        if self._db is None:
            self._db = connect(self.uri)
        return self._db

    @property
    def exists(self) -> bool:
        return self._table is not None

    @property
    def table(self) -> Any:
        if self._table is None:
            raise InputError(f"there is no '{self.name}' table: {self.missing}", path=self.uri)
        return self._table

    def _create(self, schema: Any, info: Any, overwrite: bool) -> None:
        """Create the (empty) table of ``schema`` described by ``info``; with ``overwrite`` replace one."""
        try:
            self._table = self._connect().create_table(self.name, schema=schema,
                                                       mode="overwrite" if overwrite else "create")
        except OSError as error:
            raise InputError(f"cannot create table '{self.name}': {error}", path=self.uri) from None
        self.info = info

    def count(self) -> int:
        return 0 if self._table is None else self._table.count_rows()
