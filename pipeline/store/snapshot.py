"""One consistent multi-table snapshot for reading: the four tables pinned at the versions the newest
commit record names (time travel), whatever writers commit while a query runs.

A shard's children are committed before its ``videos`` row, and a record's versions are read after its
``videos`` commit, so at a record's versions every ``videos`` row has its keyframes, segments and summary.
The children may also hold rows of a shard whose ``videos`` commit is still to come: readers keep only the
children of videos in the snapshot (``pipeline.query.sql`` does).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Mapping

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from deltalake import DeltaTable
from deltalake.exceptions import DeltaError

from pipeline.store.output import COMMITS_TABLE, Output, OutputError
from schemas import EMBEDDING_DIM_KEY, TABLES, embedding_type
from schemas.commit import CommitRecord

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Snapshot:
    output: Output
    versions: Mapping[str, int]  # table -> pinned version; absent when the table does not exist
    commits: tuple[CommitRecord, ...] = ()  # the commit records (provenance: models, profile, widths)
    _tables: dict = field(default_factory=dict, compare=False, repr=False)
    _held: list = field(default_factory=list, compare=False, repr=False)  # the videos rows' keys, read once

    @property
    def key(self) -> str:
        """Names this snapshot's content: equal keys, equal rows."""
        return ",".join(f"{t}={self.versions.get(t, -1)}" for t in TABLES)

    def table(self, name: str) -> DeltaTable | None:
        if name not in self.versions:
            return None
        if name not in self._tables:
            self._tables[name] = self.output.table(name, self.versions[name])
        return self._tables[name]

    def dataset(self, name: str) -> ds.Dataset:
        """The table at its pinned version as a pyarrow dataset (an empty one with the declared schema when
        the table does not exist yet)."""
        found = self.table(name)
        if found is None:
            return ds.dataset(self.output.schema(name, self.embedding_dim or 1).empty_table())
        return self.output.dataset(name, found=found)

    @property
    def key_columns(self) -> list[str]:
        return key_columns(self.table("videos"))

    @property
    def embedding_dim(self) -> int | None:
        """The keyframes' embedding width, when all have one width (Delta stores the vectors as plain lists)."""
        dims = {c.embedding_dim for c in self.commits if c.embedding_dim}
        if len(dims) == 1:
            return dims.pop()
        found = self.table("keyframes")
        if found is not None and not dims:
            meta = pa.schema(found.schema().to_arrow()).field("embedding").metadata or {}
            if EMBEDDING_DIM_KEY.encode() in meta:
                return int(meta[EMBEDDING_DIM_KEY.encode()])
        return None

    def present(self, name: str) -> ds.Dataset:
        """The table's rows of videos in the snapshot's ``videos``, in the shard (and partition) that holds
        them there: a shard's children are committed before its ``videos`` row, so the pinned children may
        hold rows of a shard whose ``videos`` commit is still to come, or of a shard killed before it, whose
        videos another shard holds now."""
        if name == "videos":
            return self.dataset(name)
        key = self.key_columns
        if not self._held:
            self._held.append(row_keys(key, self.dataset("videos").to_table(columns=key)).combine_chunks())
        return self.dataset(name).filter(row_keys(key).isin(self._held[0]))

    def read(self, name: str, columns: list[str] | None = None, filter: Any = None) -> pa.Table:
        """Rows of one table, children only of videos present (``present``), embeddings as fixed-size lists
        when the width is one."""
        table = self.present(name).to_table(columns=columns, filter=filter)
        dim = self.embedding_dim if "embedding" in table.column_names else None
        if dim:
            i = table.column_names.index("embedding")
            table = table.set_column(i, pa.field("embedding", embedding_type(dim)), table.column(i).cast(embedding_type(dim)))
        return table


def key_columns(videos: DeltaTable | None) -> list[str]:
    """What names a video's rows in one commit: its id, its shard and its partition (shard ids, digests of
    their videos, repeat across daily partitions that hold the same videos)."""
    return ["video_id", "shard_id", *(videos.metadata().partition_columns if videos is not None else [])]


def row_keys(columns: list[str], rows: pa.Table | None = None) -> Any:
    """Each row's ``columns`` as one string: an array of ``rows``' keys, or without rows the expression
    that computes them in a dataset filter."""
    values = [ds.field(c) for c in columns] if rows is None else [rows[c] for c in columns]
    return pc.binary_join_element_wise(*values, "\x1f")


def read_commits(output: Output, version: int | None = None) -> list[CommitRecord]:
    found = output.table(COMMITS_TABLE, version)
    if found is None:
        return []
    rows = output.dataset(COMMITS_TABLE, found=found).to_table(columns=["record"]).column("record").to_pylist()
    return [CommitRecord.from_json(r) for r in rows]


def open_snapshot(uri: str, storage_options: Mapping[str, Any] | None = None) -> Snapshot:
    """The newest consistent snapshot of an output, or one line when there is nothing to read."""
    output = Output(uri, storage_options)
    if not output.fs.exists(output.root):
        raise OutputError(f"output {uri} does not exist")
    output.check_layout()
    commits = read_commits(output)
    if output.table("videos") is None:
        raise OutputError(f"no reelscope tables under {uri} (run `reelscope run` first)")
    pinned = pinned_tables(output, commits)
    return Snapshot(output, {name: t.version() for name, t in pinned.items()}, tuple(commits), pinned)


def pinned_tables(output: Output, commits: list[CommitRecord]) -> dict[str, DeltaTable]:
    """The tables at the versions of the newest commit record (the highest ``videos`` version); at their
    current versions (``videos`` first) where there is none or it names a version no longer there."""
    newest = max((c for c in commits if c.versions.get("videos", -1) >= 0),
                 key=lambda c: tuple(c.versions.get(t, -1) for t in TABLES), default=None)
    tables = {}
    for name in TABLES:
        wanted = newest.versions.get(name) if newest else None
        found = None
        if wanted is not None and wanted >= 0:
            try:
                found = output.table(name, wanted)
            except (DeltaError, OSError) as exc:  # that version's log was cleaned up: read the current one
                log.warning("version %s of %s is gone (%s); reading its current version", wanted, name, exc)
        found = found or output.table(name)
        if found is not None:
            tables[name] = found
    return tables
