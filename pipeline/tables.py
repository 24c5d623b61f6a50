"""Parquet writing with the explicit schemas, shard files, manifest commit, and readers.

Layout under an output root (any fsspec URI)::

    <output>/<table>/[<partition>/]shard-<id>.parquet     data, one file per table per shard
    <output>/_manifests/[<partition>/]shard-<id>.json      the commit marker (``schemas.manifest.ShardManifest``),
                                                          written last, exactly once

Object stores have no atomic rename, so a shard becomes visible only when its manifest exists: writers
retract an old manifest before rewriting a shard's files, then put the new manifest with a conditional
create (``IfNoneMatch="*"`` on S3). Readers trust only files that a manifest names.
"""
from __future__ import annotations

import dataclasses
import logging
import posixpath
import re
import uuid
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from schemas import SCHEMA_VERSION, TABLES, schema_for
from schemas.manifest import ShardManifest, TableFile

log = logging.getLogger(__name__)

MANIFEST_DIR = "_manifests"
_SHARD_ID = re.compile(r"^[0-9a-f]{8,64}$")


class OutputError(RuntimeError):
    """The output location cannot be used; the message is one line meant for the user."""


def open_output(uri: str, storage_options: Mapping[str, Any] | None = None):
    """Return ``(filesystem, root path)`` for an output URI."""
    fs, root = fsspec.core.url_to_fs(uri, **dict(storage_options or {}))
    return fs, root.rstrip("/")


@dataclass(frozen=True)
class Output:
    """An output root: where the four tables and their manifests live."""

    uri: str
    storage_options: Mapping[str, Any] | None = None
    partition: str | None = None

    def __post_init__(self) -> None:
        fs, root = open_output(self.uri, self.storage_options)
        object.__setattr__(self, "fs", fs)
        object.__setattr__(self, "root", root)

    def _dir(self, name: str) -> str:
        parts = [self.root, name] + ([self.partition] if self.partition else [])
        return posixpath.join(*parts)

    def data_path(self, table: str, shard_id: str) -> str:
        return posixpath.join(self._dir(table), f"shard-{shard_id}.parquet")

    def manifest_path(self, shard_id: str) -> str:
        return posixpath.join(self._dir(MANIFEST_DIR), f"shard-{shard_id}.json")

    def check_writable(self) -> None:
        """Fail early, with one line, when the output cannot be written."""
        # A name of its own: concurrent shard tasks checking the same output must not delete each other's.
        probe = posixpath.join(self.root, f".reelscope-write-check-{uuid.uuid4().hex}")
        try:
            self.fs.makedirs(self.root, exist_ok=True)
            self.fs.pipe_file(probe, b"ok")
            self.fs.rm_file(probe)
        except (OSError, PermissionError) as exc:
            raise OutputError(f"output {self.uri} is not writable: {exc.__class__.__name__}: {exc}") from None

    # -- writing -------------------------------------------------------------------------------------

    def write_shard(self, shard_id: str, tables: Mapping[str, pa.Table], manifest: ShardManifest) -> ShardManifest:
        """Write one shard's four tables, then its manifest (the commit). Returns the manifest written."""
        if not _SHARD_ID.match(shard_id):
            raise ValueError(f"refusing to write a shard without a proper shard id: {shard_id!r}")
        missing = set(TABLES) - set(tables)
        if missing:
            raise ValueError(f"shard {shard_id} lacks tables: {', '.join(sorted(missing))}")
        self.retract(shard_id)
        files = {}
        for name in TABLES:
            table = tables[name]
            path = self.data_path(name, shard_id)
            self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
            with self.fs.open(path, "wb") as f:
                pq.write_table(table, f, compression="zstd")
            files[name] = TableFile(posixpath.relpath(path, self.root), table.num_rows)
        body = dataclasses.replace(
            manifest, shard_id=shard_id, schema_version=SCHEMA_VERSION, partition=self.partition, files=files,
        )
        mpath = self.manifest_path(shard_id)
        self.fs.makedirs(posixpath.dirname(mpath), exist_ok=True)
        self.fs.pipe_file(mpath, body.to_json().encode(), mode="create")
        return body

    def retract(self, shard_id: str) -> None:
        """Make a shard invisible (its manifest goes first), then remove its files."""
        mpath = self.manifest_path(shard_id)
        if self.fs.exists(mpath):
            self.fs.rm_file(mpath)
        for name in TABLES:
            path = self.data_path(name, shard_id)
            if self.fs.exists(path):
                self.fs.rm_file(path)

    def clear_partition(self) -> int:
        """Retract every shard of this output's partition (a daily rerun replaces its partition)."""
        shards = [m.shard_id for m in self.manifests()]
        for shard_id in shards:
            self.retract(shard_id)
        # Files left by a writer that died before committing are invisible but still take space.
        for name in TABLES:
            d = self._dir(name)
            if self.fs.exists(d):
                self.fs.rm(d, recursive=True)
        return len(shards)

    # -- reading -------------------------------------------------------------------------------------

    def manifests(self, all_partitions: bool = False) -> list[ShardManifest]:
        """Committed shards of this partition (or of every partition)."""
        base = posixpath.join(self.root, MANIFEST_DIR)
        # Object-store listings are cached per filesystem instance; another process may have committed since.
        self.fs.invalidate_cache()
        pattern = posixpath.join(base, "**", "shard-*.json") if all_partitions else posixpath.join(
            self._dir(MANIFEST_DIR), "shard-*.json"
        )
        paths = sorted(self.fs.glob(pattern))
        if all_partitions:
            paths = sorted(set(paths) | set(self.fs.glob(posixpath.join(base, "shard-*.json"))))
        out = []
        for path in paths:
            with self.fs.open(path, "rb") as f:
                out.append(ShardManifest.from_json(f.read()))
        return out

    def file_path(self, manifest: ShardManifest, table: str) -> str:
        """Full path of the data file a manifest names for ``table`` (manifests hold paths relative to root)."""
        return posixpath.join(self.root, manifest.files[table].path)

    def committed_files(self, table: str, all_partitions: bool = True) -> list[str]:
        """Full paths of a table's committed data files."""
        if table not in TABLES:
            raise ValueError(f"unknown table {table!r}; tables are {', '.join(TABLES)}")
        return [self.file_path(m, table) for m in self.manifests(all_partitions)]

    def read_table(self, table: str, columns: Iterable[str] | None = None, all_partitions: bool = True) -> pa.Table:
        """Read one table from committed shards only, with its declared schema."""
        paths = self.committed_files(table, all_partitions)
        cols = list(columns) if columns is not None else None
        if not paths:
            schema = schema_for(table, embedding_dim=1) if table == "keyframes" else schema_for(table)
            empty = schema.empty_table()
            return empty.select(cols) if cols else empty
        parts = []
        for path in paths:
            with self.fs.open(path, "rb") as f:
                parts.append(pq.read_table(f, columns=cols))
        return pa.concat_tables(parts)
