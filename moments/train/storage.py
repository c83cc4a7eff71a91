"""Where a distributed training run keeps its files: a local folder or an object-store URI (pyarrow filesystems).

Layout under ``storage`` for a run called ``name``::

    <name>-stage<k>/                 the Ray Train run of stage k (RunConfig name), one per stage
        checkpoint_manager_snapshot.json, epoch001/, epoch002/, ...   (Ray Train; each epoch dir holds
                                      model.pt, a drn checkpoint, and train_state.pt, the optimizer and epoch;
                                      ``moments.train.progress`` reads the snapshot)
        best.json                     the stage's best epoch on the validation split
        DONE.json                     written last: the stage is complete and is skipped when the job reruns
    <name>/best.pt                    the best checkpoint of all stages, with its validation and test metrics
    <name>/summary.json               the final summary (also the last stdout line of the CLI)
"""

from __future__ import annotations

import json
import os
import posixpath
import uuid
from dataclasses import dataclass
from typing import Any

import pyarrow.fs as pafs

from drn.errors import InputError
from drn.store.object_store import describe_error, filesystem_for, local_path

DONE_FILE, BEST_FILE = "DONE.json", "best.json"


@dataclass(frozen=True)
class RunStorage:
    """The storage root of a run (``uri``: as the user gave it, made absolute when local) and its filesystem."""

    uri: str
    name: str
    filesystem: pafs.FileSystem
    root: str  # the root as a path of ``filesystem``

    @classmethod
    def open(cls, storage: str | os.PathLike, name: str) -> RunStorage:
        """The storage root ``storage`` (a folder, a ``file://`` or an object-store URI) of the run ``name``;
        InputError for a bad name or an object store that cannot be opened."""
        text = os.fspath(storage)
        if not name or "/" in name or name.strip() != name:
            raise InputError(f"run name {name!r} must be a non-empty word without '/' or surrounding spaces")
        local = local_path(text)
        if local is None:  # an object store: s3:// from the AWS environment variables (drn.store.object_store)
            try:  # the bucket is checked here
                filesystem, root = filesystem_for(text)
            except InputError as err:
                raise InputError(f"storage cannot be opened: {err}".splitlines()[0]) from err
            return cls(text.rstrip("/"), name, filesystem, root.rstrip("/"))
        local = os.path.abspath(local)
        return cls(local, name, pafs.LocalFileSystem(), local)

    def stage_run(self, stage: int) -> str:
        """The Ray Train run name (RunConfig.name) of ``stage``."""
        return f"{self.name}-stage{stage}"

    def uri_of(self, *parts: str) -> str:
        return "/".join([self.uri, *parts])

    def path_of(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def uri_from_path(self, fs_path: str) -> str:
        """A filesystem path under the root (e.g. a Ray checkpoint's ``path``) as a URI under ``uri``."""
        relative = posixpath.relpath(fs_path, self.root)
        if relative.startswith(".."):
            raise ValueError(f"{fs_path} is not under the storage root {self.root}")
        return self.uri_of(relative)

    def check_writable(self) -> None:
        """InputError unless a file can be written to and deleted from the root (before any worker starts)."""
        probe = self.path_of(f".write-probe-{uuid.uuid4().hex}")
        try:
            self.filesystem.create_dir(self.root, recursive=True)
            with self.filesystem.open_output_stream(probe) as fh:
                fh.write(b"ok")
            self.filesystem.delete_file(probe)
        except Exception as err:
            raise InputError(f"storage is not writable ({describe_error(err)})", path=self.uri) from err

    def write_json(self, data: dict[str, Any], *parts: str) -> str:
        path = self.path_of(*parts)
        self.filesystem.create_dir(posixpath.dirname(path), recursive=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with self.filesystem.open_output_stream(tmp) as fh:
            fh.write(json.dumps(data, indent=1).encode())
        self.filesystem.move(tmp, path)
        return self.uri_of(*parts)

    def read_json(self, *parts: str) -> dict[str, Any] | None:
        """The JSON file at ``parts`` or None when it does not exist."""
        path = self.path_of(*parts)
        if self.filesystem.get_file_info(path).type == pafs.FileType.NotFound:
            return None
        with self.filesystem.open_input_stream(path) as fh:
            return json.loads(fh.read().decode())

    def upload_file(self, local_path: str, *parts: str) -> str:
        """Copy a local file to ``parts`` under the root; returns its URI."""
        path = self.path_of(*parts)
        self.filesystem.create_dir(posixpath.dirname(path), recursive=True)
        pafs.copy_files(local_path, path, source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=self.filesystem)
        return self.uri_of(*parts)

    @property
    def ray_storage(self) -> tuple[str, pafs.FileSystem | None]:
        """``(storage_path, storage_filesystem)`` for Ray Train's RunConfig: an object store goes as its path inside
        this run's filesystem (so Ray Train and its workers use the same endpoint, region and timeouts)."""
        if isinstance(self.filesystem, pafs.LocalFileSystem):
            return self.uri, None
        return self.root, self.filesystem

    def stage_done(self, stage: int) -> dict[str, Any] | None:
        return self.read_json(self.stage_run(stage), DONE_FILE)
