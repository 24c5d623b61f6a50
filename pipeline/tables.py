"""Parquet writing with the explicit schemas, shard files, manifest commit, and readers.

Layout under an output root (any fsspec URI)::

    <output>/<table>/[<partition>/]shard-<id>-<generation>.parquet   data, one file per table per shard write
    <output>/_manifests/[<partition>/]shard-<id>.json                 the commit (``ShardManifest``): the files
                                                                     of the shard's current generation

A write puts a shard's rows in files under a new generation's names, then commits by swapping the manifest:
a conditional create for a new shard, a compare-and-swap on the version read for a shard written before (one
PUT over the old key on S3, an atomic rename locally; see ``pipeline.atomic``), and only then removes the
previous generation's files. Whatever a crash interrupts, readers see the old rows or the new ones, never
neither and never both. Locally every file is fsync'ed and renamed into place, its folder fsync'ed.
Readers trust only files that a readable manifest names; an unreadable manifest is skipped with a warning
(``pipeline.repair`` removes it).
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
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.atomic import Conflict, read_versioned, swap, write_file
from schemas import SCHEMA_VERSION, TABLES, schema_for
from schemas.manifest import ShardManifest, TableFile, VideoEntry

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
    # The ``pipeline.lease.Lease`` held on this output while a run writes it (set by the lease itself).
    lease = None

    def __post_init__(self) -> None:
        fs, root = open_output(self.uri, self.storage_options)
        object.__setattr__(self, "fs", fs)
        object.__setattr__(self, "root", root)

    def folder(self, name: str) -> str:
        """The folder of a table (or of the manifests) for this output's partition."""
        parts = [self.root, name] + ([self.partition] if self.partition else [])
        return posixpath.join(*parts)

    def data_path(self, table: str, shard_id: str, generation: str) -> str:
        return posixpath.join(self.folder(table), f"shard-{shard_id}-{generation}.parquet")

    def manifest_path(self, shard_id: str) -> str:
        return posixpath.join(self.folder(MANIFEST_DIR), f"shard-{shard_id}.json")

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

    def write_shard(
        self, shard_id: str, tables: Mapping[str, pa.Table], manifest: ShardManifest, drop: Iterable[str] = (),
    ) -> ShardManifest:
        """Write one shard's four tables under new names, then commit them by swapping its manifest.

        Rows the shard held before for videos neither in ``tables`` nor in ``drop`` stay (under the same
        configuration): a redo of some of a shard's videos replaces just those. Returns the manifest written."""
        if not _SHARD_ID.match(shard_id):
            raise ValueError(f"refusing to write a shard without a proper shard id: {shard_id!r}")
        missing = set(TABLES) - set(tables)
        if missing:
            raise ValueError(f"shard {shard_id} lacks tables: {', '.join(sorted(missing))}")
        mpath = self.manifest_path(shard_id)
        found = read_versioned(self.fs, mpath)
        previous = _parse(found.data, mpath) if found else None
        kept = previous if previous and previous.config_fingerprint == manifest.config_fingerprint else None
        gone = set(drop) | set(tables["videos"].column("video_id").to_pylist())
        generation = uuid.uuid4().hex[:12]
        written: list[str] = []
        try:
            files = {}
            for name in TABLES:
                table = self._merged(kept, name, tables[name], gone)
                path = self.data_path(name, shard_id, generation)
                write_file(self.fs, path, _parquet_bytes(table))
                written.append(path)
                files[name] = TableFile(posixpath.relpath(path, self.root), table.num_rows)
            body = dataclasses.replace(
                manifest, shard_id=shard_id, schema_version=SCHEMA_VERSION, partition=self.partition, files=files,
                videos=_kept_videos(kept, gone) + tuple(manifest.videos),
            )
            if self.lease is not None:
                self.lease.check()
            self.fs.makedirs(posixpath.dirname(mpath), exist_ok=True)
            swap(self.fs, mpath, body.to_json().encode(), found.token if found else None)
        except Conflict:
            self.remove_files(written)
            raise OutputError(f"shard {shard_id} of {self.uri} was committed by another writer meanwhile") from None
        except BaseException:
            # A failure after the swap itself (a folder fsync, a lost reply) may leave the commit made.
            if not self._commits(mpath, written):
                self.remove_files(written)
            raise
        if previous is not None:
            self.remove_files([self.file_path(previous, t) for t in previous.files if previous.files[t].path not in
                          {f.path for f in files.values()}])
        return body

    def _commits(self, mpath: str, paths: list[str]) -> bool:
        """Whether the manifest at ``mpath`` names any of ``paths`` (then they are committed rows)."""
        try:
            found = read_versioned(self.fs, mpath)
        except OSError:
            return True  # cannot tell: keeping orphans is safe, removing committed files is not
        manifest = _parse(found.data, mpath) if found else None
        named = {self.file_path(manifest, t) for t in manifest.files} if manifest else set()
        return not named.isdisjoint(paths)

    def _merged(self, kept: ShardManifest | None, name: str, table: pa.Table, gone: set[str]) -> pa.Table:
        """``table`` plus the rows of the shard's previous generation for videos not in ``gone``."""
        if kept is None or name not in kept.files:
            return table
        with self.fs.open(self.file_path(kept, name), "rb") as f:
            old = pq.read_table(f)
        old = old.filter(pc.invert(pc.is_in(old.column("video_id"), value_set=pa.array(sorted(gone), pa.string()))))
        if old.num_rows == 0:
            return table
        return pa.concat_tables([old.select(table.column_names).cast(table.schema), table])

    def remove_files(self, paths: Iterable[str]) -> None:
        """Remove files no manifest names any more; one left behind is an orphan ``repair`` removes."""
        for path in paths:
            try:
                self.fs.rm_file(path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("could not remove %s: %s", path, exc)

    def retract(self, shard_id: str) -> None:
        """Make a shard invisible (its manifest goes first), then remove the files it named."""
        mpath = self.manifest_path(shard_id)
        found = read_versioned(self.fs, mpath)
        if found is None:
            return
        manifest = _parse(found.data, mpath)
        self.fs.rm_file(mpath)
        if manifest is not None:
            self.remove_files(self.file_path(manifest, t) for t in manifest.files)

    def clear_partition(self) -> int:
        """Retract every shard of this output's partition (a daily rerun replaces its partition)."""
        shards = [m.shard_id for m in self.manifests()]
        for shard_id in shards:
            self.retract(shard_id)
        # Files left by a writer that died before committing are invisible but still take space.
        for name in TABLES:
            d = self.folder(name)
            if self.fs.exists(d):
                self.fs.rm(d, recursive=True)
        return len(shards)

    # -- reading -------------------------------------------------------------------------------------

    def manifest_entries(self, all_partitions: bool = False) -> list[tuple[str, ShardManifest | None]]:
        """Every manifest file of this partition (or of every partition) with its content, None when
        unreadable (empty, truncated, not JSON)."""
        base = posixpath.join(self.root, MANIFEST_DIR)
        # Object-store listings are cached per filesystem instance; another process may have committed since.
        self.fs.invalidate_cache()
        pattern = posixpath.join(base, "**", "shard-*.json") if all_partitions else posixpath.join(
            self.folder(MANIFEST_DIR), "shard-*.json"
        )
        paths = set(self.fs.glob(pattern))
        if all_partitions:
            paths |= set(self.fs.glob(posixpath.join(base, "shard-*.json")))
        out = []
        for path in sorted(paths):
            try:
                data = self.fs.cat_file(path)
            except FileNotFoundError:  # retracted since the listing
                continue
            out.append((path, _parse(data, path)))
        return out

    def manifests(self, all_partitions: bool = False) -> list[ShardManifest]:
        """Committed shards of this partition (or of every partition); unreadable manifests are skipped."""
        return [m for _, m in self.manifest_entries(all_partitions) if m is not None]

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
        # An empty keyframes file of a shard where no model ran has no embedding width of its own.
        parts = [p for p in parts if p.num_rows] or parts[:1]
        return pa.concat_tables(parts)


def _parse(data: bytes, path: str) -> ShardManifest | None:
    """A manifest, or None (with a one-line warning) when it cannot be read: a write that died, a full disk."""
    try:
        return ShardManifest.from_json(data)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        log.warning("skipping unreadable manifest %s (%s); `reelscope repair` removes it", path,
                    f"{len(data)} bytes" if data else "empty")
        log.debug("manifest %s: %s", path, exc)
        return None


def _kept_videos(kept: ShardManifest | None, gone: set[str]) -> tuple[VideoEntry, ...]:
    return () if kept is None else tuple(v for v in kept.videos if v.video_id not in gone)


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()
