"""An output root: four Delta tables and the commit records, on a local folder or an object store.

Layout under ``<output>``::

    videos/ keyframes/ segments/ summaries/   Delta tables (Parquet, zstd), partitioned by the partition's
                                              column (``dt``) when the output was first written with one
    _commits/                                 Delta table of commit records (``schemas.commit.CommitRecord``)
    _staging/<run>/                           a partition replacement's shards until it is published
    _plans/ _runs/ _lease*                    orchestration records (not tables)

delta-rs (``deltalake``) writes the tables: a commit is one conditional PUT of the next log entry (S3:
``conditional_put: etag``, no lock service), so of two writers of the same version exactly one wins.
"""
from __future__ import annotations

import os
import posixpath
import uuid
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Mapping

import fsspec
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
from deltalake import DeltaTable
from deltalake.exceptions import DeltaError, TableNotFoundError

from schemas import TABLES, schema_for

COMMITS_TABLE = "_commits"
STAGING_DIR = "_staging"
LEGACY_MANIFESTS = "_manifests"  # the hand-made commit protocol before Delta (``reelscope migrate``)


class OutputError(RuntimeError):
    """The output location cannot be used; the message is one line meant for the user."""


def open_output(uri: str, storage_options: Mapping[str, Any] | None = None):
    """Return ``(filesystem, root path)`` for an output URI."""
    fs, root = fsspec.core.url_to_fs(uri, **dict(storage_options or {}))
    return fs, root.rstrip("/")


def _protocols(fs) -> tuple[str, ...]:
    return (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)


def is_local(fs) -> bool:
    return "file" in _protocols(fs) or "local" in _protocols(fs)


def delta_storage_options(options: Mapping[str, Any] | None, uri: str) -> dict[str, str]:
    """delta-rs options for the fsspec (s3fs) options a user already passes: credentials, endpoint, region,
    time limits; conditional PUTs for S3 commits. Upper-case ``AWS_*`` keys pass through as they are."""
    opts = dict(options or {})
    out = {k: str(v) for k, v in opts.items() if k.isupper()}
    if not uri.startswith(("s3://", "s3a://")):
        return out
    client = dict(opts.get("client_kwargs") or {})
    config = dict(opts.get("config_kwargs") or {})
    for ours, theirs in (("key", "AWS_ACCESS_KEY_ID"), ("secret", "AWS_SECRET_ACCESS_KEY"), ("token", "AWS_SESSION_TOKEN")):
        if opts.get(ours):
            out.setdefault(theirs, str(opts[ours]))
    endpoint = client.get("endpoint_url") or opts.get("endpoint_url")
    if endpoint:
        out.setdefault("AWS_ENDPOINT_URL", endpoint)
        if endpoint.startswith("http://"):
            out.setdefault("AWS_ALLOW_HTTP", "true")
    region = client.get("region_name") or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:  # else delta-rs finds it as botocore would (a profile, the instance's metadata)
        out.setdefault("AWS_REGION", region)
    if config.get("connect_timeout"):
        out.setdefault("connect_timeout", f"{config['connect_timeout']}s")
    if config.get("read_timeout"):
        # A whole request, a Parquet file of keyframes included, not one read: generous, but bounded.
        out.setdefault("timeout", f"{max(60, 6 * int(config['read_timeout']))}s")
        out.setdefault("max_retries", "3")
        out.setdefault("retry_timeout", f"{max(30, 3 * int(config['read_timeout']))}s")
    out.setdefault("conditional_put", "etag")
    return out


def _unreachable(output: Output, table: str, exc: BaseException) -> str:
    first = next((line.strip(" ↳") for line in str(exc).splitlines() if line.strip(" ↳")), exc.__class__.__name__)
    return f"cannot read the {table} table of {output.uri}: {first}"


def quote(value: str) -> str:
    """A SQL string literal for a Delta predicate."""
    return "'" + str(value).replace("'", "''") + "'"


@dataclass(frozen=True)
class Output:
    """Where the four tables live, and the partition (``key=value``) this writer or reader works in."""

    uri: str
    storage_options: Mapping[str, Any] | None = None
    partition: str | None = None
    # table -> DeltaTable kept current; ("log", table, version) -> that log entry's actions (never change)
    _current: dict = field(default_factory=dict, compare=False, repr=False)

    @cached_property
    def _located(self) -> tuple[Any, str]:
        return open_output(self.uri, self.storage_options)

    @property
    def fs(self):
        return self._located[0]

    @property
    def root(self) -> str:
        return self._located[1]

    @property
    def partition_column(self) -> str | None:
        return self.partition.split("=", 1)[0] if self.partition else None

    @property
    def partition_value(self) -> str | None:
        return self.partition.split("=", 1)[1] if self.partition else None

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def table_uri(self, table: str) -> str:
        """The URI delta-rs opens: a plain path locally, ``s3://bucket/key`` on S3."""
        path = self.path(table)
        return path if is_local(self.fs) else self.fs.unstrip_protocol(path)

    @cached_property
    def delta_options(self) -> dict[str, str]:
        return delta_storage_options(self.storage_options, self.fs.unstrip_protocol(self.root))

    def current(self, table: str) -> DeltaTable | None:
        """The table at its newest version, loaded once per ``Output`` and brought up to date from the log
        (what a writer committing shard after shard needs, without replaying the log each time)."""
        found = self._current.get(table)
        if found is None:
            found = self._current[table] = self.table(table)
        else:
            try:
                found.update_incremental()
            except (OSError, DeltaError) as exc:
                raise OutputError(_unreachable(self, table, exc)) from None
        return found

    def table(self, table: str, version: int | None = None) -> DeltaTable | None:
        """The Delta table (at ``version``), or None when it does not exist yet."""
        try:
            return DeltaTable(self.table_uri(table), version=version, storage_options=self.delta_options)
        except TableNotFoundError:
            return None
        except (OSError, DeltaError) as exc:  # a bucket that is not there, credentials refused, S3 down
            raise OutputError(_unreachable(self, table, exc)) from None

    def arrow_filesystem(self, table: str) -> pafs.FileSystem:
        """A pyarrow filesystem rooted at the table, for reading its files: pyarrow's own locally, the output's
        fsspec filesystem elsewhere. (delta-rs's default handler calls into Python from Arrow's IO threads and
        aborts about every other process at exit.)"""
        base = pafs.LocalFileSystem() if is_local(self.fs) else pafs.PyFileSystem(pafs.FSSpecHandler(self.fs))
        return pafs.SubTreeFileSystem(self.path(table), base)

    def dataset(self, table: str, version: int | None = None, found: DeltaTable | None = None) -> ds.Dataset | None:
        """The table (at ``version``, or the ``DeltaTable`` given) as a pyarrow dataset; None when absent."""
        found = found if found is not None else self.table(table, version)
        if found is None:
            return None
        return found.to_pyarrow_dataset(filesystem=self.arrow_filesystem(table))

    def staging(self, run_key: str) -> Output:
        """Where a partition replacement's shards wait until ``publish`` (same partition, own tables)."""
        return Output(self.fs.unstrip_protocol(self.path(STAGING_DIR, run_key)), self.storage_options, self.partition)

    def schema(self, table: str, embedding_dim: int | None = None) -> pa.Schema:
        """The table's schema as written here: the partition column last when partitioned."""
        schema = schema_for(table, embedding_dim or 1) if table == "keyframes" else schema_for(table)
        return schema.append(pa.field(self.partition_column, pa.string())) if self.partition else schema

    def with_partition(self, table: pa.Table) -> pa.Table:
        """``table`` with the partition column filled in, when this output writes a partition."""
        if not self.partition:
            return table
        return table.append_column(
            pa.field(self.partition_column, pa.string()), pa.array([self.partition_value] * table.num_rows, pa.string())
        )

    def partition_predicate(self) -> str:
        return f"{self.partition_column} = {quote(self.partition_value)}" if self.partition else ""

    def check_layout(self) -> None:
        """One line, and what to do, for an output written in the manifest layout of earlier versions."""
        # Also after a migration that died halfway: ``migrate`` removes the manifests last, once all is verified.
        if self.fs.exists(self.path(LEGACY_MANIFESTS)):
            raise OutputError(
                f"output {self.uri} holds tables in the manifest layout of earlier reelscope versions; "
                f"convert them with `reelscope migrate --output {self.uri}` first"
            )

    def check_writable(self) -> None:
        """Fail early, with one line, when the output cannot be written."""
        # A name of its own: concurrent shard tasks checking the same output must not delete each other's.
        probe = self.path(f".reelscope-write-check-{uuid.uuid4().hex}")
        try:
            self.fs.makedirs(self.root, exist_ok=True)
            self.fs.pipe_file(probe, b"ok")
            self.fs.rm_file(probe)
        except (OSError, PermissionError) as exc:
            raise OutputError(f"output {self.uri} is not writable: {exc.__class__.__name__}: {exc}") from None
        self.check_layout()


__all__ = ["COMMITS_TABLE", "Output", "OutputError", "TABLES", "delta_storage_options", "open_output", "quote"]
