"""``reelscope migrate``: convert an output of the manifest layout of earlier versions into Delta tables.

The old layout (schema version 2)::

    <output>/<table>/[<partition>/]shard-<id>-<generation>.parquet   one file per table per shard write
    <output>/_manifests/[<partition>/]shard-<id>.json                 the commit: the files of the shard's
                                                                     current generation, provenance

Only the files a readable manifest names hold committed rows. The conversion, under the output's leases:

1. read every manifest; an unreadable one (truncated, empty) is reported and skipped, like the old readers
   did, and so is a shard whose named files cannot be read: its videos are processed again by the next run;
2. per partition, give each video to the newest shard holding it (``committed_at``, then shard id: the old
   planner's rule for an output damaged by overlapping runs), so no video is committed twice;
3. commit each old shard, oldest first, through the store's own path (``commit_shard``: children first,
   ``videos`` last, the application transaction ``reelscope:migrate[:<partition>]:<shard>``), its rows in
   the schemas of schema version 3 (``shard_id`` on every table, the embedding as Delta's list) and its
   commit record carrying the old shard's provenance (models, profile, width, stages, ``committed_at``). A
   migration killed midway skips, when run again, the shards already committed. An output half migrated
   has a ``videos`` table, so runs may have committed there meanwhile: their rows are newer than any old
   shard's, so the old shards leave those videos out and the runs' rows stay as they are;
4. verify per partition that ``videos`` holds every video kept, once, in its shard, and every other table
   exactly the rows kept per video and shard; then write a ``migrate``/``verified`` commit record (a
   migration killed after it goes straight on to step 5 when run again);
5. remove the old layout: ``_manifests/`` first, then every ``shard-*.parquet`` file under the table folders
   (committed or not: the Delta tables never name them). A failed verification removes nothing.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import posixpath
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pipeline.store.commit import (
    app_id,
    append_record,
    commit_shard,
    committed_videos,
    ensure_tables,
    shard_committed,
    table_version,
)
from pipeline.store.lease import Lease, new_owner
from pipeline.store.output import LEGACY_MANIFESTS, Output, OutputError
from pipeline.store.snapshot import read_commits
from schemas import TABLES, schema_for
from schemas.commit import CommitRecord

RUN = "migrate"  # the run key of the commits (``reelscope:migrate:<shard>``)
VERIFIED = "verified"  # the shard id of the record that closes a partition's migration
_PARTITION = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=[^/]+$")
_OLD_DATA = re.compile(r"^shard-.+\.parquet(\.tmp-.*)?$")  # old data files and their temporaries
# Delta keeps no fixed-size list: the embedding is written as the list type a Delta reader gets back.
DELTA_EMBEDDING = pa.list_(pa.field("element", pa.float32(), nullable=False))


class _Unusable(Exception):
    """An old shard whose named files cannot be read (the message says which, and why)."""


@dataclass
class OldShard:
    """A readable manifest and what the first pass learned of its files."""

    path: str  # of the manifest
    partition: str | None
    shard_id: str
    committed_at: str
    record: CommitRecord  # its provenance, as the commit record it becomes
    files: dict[str, str]  # table -> full path
    ids: dict[str, pa.Array] = field(default_factory=dict)  # table -> its rows' video ids
    kept: set[str] = field(default_factory=set)  # the videos this shard keeps (newest holder)

    @property
    def order(self) -> tuple[str, str]:
        return self.committed_at, self.shard_id

    @property
    def video_ids(self) -> list[str]:
        return self.ids["videos"].to_pylist()


def run_key(partition: str | None) -> str:
    """The migration's run key in a partition: old shard ids repeat across partitions (they are a digest
    of the shard's video ids, and a daily partition may hold the same videos)."""
    return f"{RUN}:{partition}" if partition else RUN


def _where(partition: str | None) -> str:
    return f" ({partition})" if partition else ""


# -- reading the old layout --------------------------------------------------------------------------


def _manifest_paths(root: Output) -> list[str]:
    base = root.path(LEGACY_MANIFESTS)
    root.fs.invalidate_cache()  # object-store listings are cached per filesystem instance
    found = set(root.fs.glob(posixpath.join(base, "shard-*.json")))
    found |= set(root.fs.glob(posixpath.join(base, "*", "shard-*.json")))
    return sorted(found)


def _read_manifest(root: Output, path: str) -> tuple[OldShard | None, str | None]:
    """The shard a manifest commits, or None and the line saying why it is skipped."""
    rel = posixpath.relpath(path, root.root)
    folder = posixpath.relpath(posixpath.dirname(path), root.path(LEGACY_MANIFESTS))
    partition = None if folder in ("", ".") else folder
    if partition is not None and not _PARTITION.match(partition):
        raise OutputError(f"manifest {rel} of {root.uri} lies in {folder!r}, which is not a partition (key=value)")
    try:
        data = root.fs.cat_file(path)
    except FileNotFoundError:
        return None, None
    try:
        raw = json.loads(data)
        record = CommitRecord.from_json(data)
        files = {t: posixpath.join(root.root, str(f["path"])) for t, f in (raw.get("files") or {}).items()}
        committed_at = str(raw.get("committed_at") or "")
    except (ValueError, TypeError, KeyError, AttributeError):
        return None, (f"skipped unreadable manifest {rel} ({len(data)} bytes): its shard's files are not committed; "
                      "the next run processes its videos again")
    shard_id = record.shard_id or posixpath.basename(path)[len("shard-"):-len(".json")]
    if "videos" not in files:
        return None, f"skipped manifest {rel}: it names no videos file; the next run processes its videos again"
    record = dataclasses.replace(record, kind="migrate", run=run_key(partition), shard_id=shard_id,
                                 partition=partition, rows={}, versions={})
    return OldShard(path, partition, shard_id, committed_at, record, files), None


@contextlib.contextmanager
def _opened(root: Output, path: str):
    """A named data file, open; ``_Unusable`` when it is gone or not Parquet (other storage errors propagate:
    a passing failure must abort the migration, not drop the shard)."""
    rel = posixpath.relpath(path, root.root)
    try:
        with root.fs.open(path, "rb") as f:
            yield f
    except FileNotFoundError:
        raise _Unusable(f"its file {rel} is missing") from None
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise _Unusable(f"its file {rel} cannot be read ({str(exc).splitlines()[0][:120]})") from None


def _read_file(root: Output, path: str) -> pa.Table:
    with _opened(root, path) as f:
        return pq.read_table(f)


def _survey(root: Output, shard: OldShard) -> None:
    """Read the video ids of each of the shard's files (every file must be readable and have the columns
    that schema version 3 requires, ``shard_id`` aside)."""
    for name in TABLES:
        if name not in shard.files:  # written by no version, but an empty table is what it would mean
            shard.ids[name] = pa.array([], pa.string())
            continue
        with _opened(root, shard.files[name]) as f:
            data = pq.ParquetFile(f)
            lacking = {c.name for c in schema_for(name, 1) if not c.nullable and c.name != "shard_id"}
            lacking -= set(data.schema_arrow.names)
            if lacking:
                raise _Unusable(f"its {name} file has no {', '.join(sorted(lacking))} column")
            shard.ids[name] = data.read(columns=["video_id"]).column("video_id").combine_chunks()


def _assign(shards: list[OldShard]) -> int:
    """Give each video to the newest shard holding it; returns the ``videos`` rows dropped."""
    holder: dict[str, OldShard] = {}
    for shard in sorted(shards, key=lambda s: s.order):
        for video_id in shard.video_ids:
            holder[video_id] = shard
    rows = 0
    for shard in shards:
        shard.kept = {v for v in shard.video_ids if holder[v] is shard}
        rows += len(shard.video_ids)
    return rows - len(holder)


# -- converting one shard ----------------------------------------------------------------------------


def _embedding_dim(shard: OldShard, keyframes: pa.Table) -> int:
    if shard.record.embedding_dim:
        return shard.record.embedding_dim
    if "embedding" in keyframes.column_names and pa.types.is_fixed_size_list(keyframes.schema.field("embedding").type):
        return keyframes.schema.field("embedding").type.list_size
    return 1


def _to_schema(name: str, table: pa.Table, shard: OldShard, dim: int) -> pa.Table:
    """Rows of an old file in the table's schema of schema version 3: ``shard_id`` set (the manifest's, so
    a retried commit replaces exactly these rows), columns of older versions dropped, the embedding as a list."""
    schema = schema_for(name, dim)
    columns, fields = [], []
    for f in schema:
        if f.name == "shard_id":
            column = pa.array([shard.shard_id] * table.num_rows, pa.string())
        elif f.name in table.column_names:
            column = table.column(f.name)
        elif f.nullable:
            column = pa.nulls(table.num_rows, f.type)
        else:
            raise _Unusable(f"its {name} file has no {f.name} column")
        if f.name == "embedding":
            f = f.with_type(DELTA_EMBEDDING)
        columns.append(column.cast(f.type))
        fields.append(f)
    return pa.Table.from_arrays(columns, schema=pa.schema(fields, metadata=schema.metadata))


def _unique_videos(videos: pa.Table) -> pa.Table:
    """One row per video (the last, should one old file hold a video twice)."""
    last = {v: i for i, v in enumerate(videos.column("video_id").to_pylist())}
    return videos.take(pa.array(sorted(last.values()), pa.int64())) if len(last) < videos.num_rows else videos


def _shard_tables(root: Output, shard: OldShard) -> dict[str, pa.Table]:
    """The rows this shard keeps, per table, ready to commit."""
    kept = pa.array(sorted(shard.kept), pa.string())
    data = {}
    for name in TABLES:
        if name in shard.files:
            rows = _read_file(root, shard.files[name])
        else:
            rows = schema_for(name, 1).empty_table()
        data[name] = rows.filter(pc.is_in(rows.column("video_id"), value_set=kept))
    data["videos"] = _unique_videos(data["videos"])
    dim = _embedding_dim(shard, data["keyframes"])
    return {name: _to_schema(name, rows, shard, dim) for name, rows in data.items()}


def _commit(output: Output, tables: Mapping[str, pa.Table], record: CommitRecord) -> CommitRecord | None:
    """One old shard's commit (``planned_version``: now, so only writers racing this very commit are
    looked for; reading every earlier shard's files again for each shard would grow with their square)."""
    return commit_shard(output, tables, record, planned_version=table_version(output, "videos"))


def _counts(shard: OldShard, name: str) -> collections.Counter:
    """The rows ``shard`` keeps in table ``name`` per (video, shard)."""
    return collections.Counter((v, shard.shard_id) for v in shard.ids[name].to_pylist() if v in shard.kept)


# -- verification and removal ------------------------------------------------------------------------


def _verify(output: Output, shards: list[OldShard]) -> tuple[str | None, int]:
    """Whether the Delta tables of this partition hold exactly the rows the old shards kept, per video and
    shard: None, or what differs; and the number of videos that later runs committed (they are theirs)."""
    where = output.partition or "the output"
    part = ds.field(output.partition_column) == output.partition_value if output.partition else None
    old = {s.shard_id for s in shards}
    expected = {name: sum((_counts(s, name) for s in shards), collections.Counter()) for name in TABLES}
    committed: set[tuple[str, str]] = set()
    for name in TABLES:
        found = output.dataset(name)
        rows = (found.to_table(columns=["video_id", "shard_id"], filter=part) if found is not None else
                pa.table({"video_id": pa.array([], pa.string()), "shard_id": pa.array([], pa.string())}))
        have = collections.Counter(zip(rows.column("video_id").to_pylist(), rows.column("shard_id").to_pylist()))
        want = expected[name]
        if name == "videos":
            committed = set(have)
            twice = sorted(v for v, n in collections.Counter(v for v, _ in have.elements()).items() if n > 1)
            if twice:
                return f"the videos table of {where} holds {len(twice)} video(s) more than once (e.g. {twice[0]})", 0
        off = sorted(k for k in want if have[k] != want[k])
        # Rows of an old shard that it does not keep (and that no later run committed in its id) are wrong too.
        off += sorted(k for k in have if k not in want and k[1] in old and k not in committed)
        if off:
            (video, shard), missing = off[0], sum(1 for k in off if not have[k])
            return (f"the {name} table of {where} holds {have[off[0]]} row(s) of video {video} in shard {shard}, the "
                    f"old shards kept {want[off[0]]} ({len(off)} video(s) differ, {missing} missing)"), 0
    return None, len(committed - set(expected["videos"]))


def _old_data_files(root: Output) -> list[str]:
    """Every data file (and temporary) of the old layout under the table folders, named or not."""
    out = []
    for name in TABLES:
        folder = root.path(name)
        try:
            found = root.fs.find(folder)
        except FileNotFoundError:
            continue
        for path in found:
            rel = posixpath.relpath(path, folder).split("/")
            if len(rel) <= 2 and not rel[0].startswith("_") and _OLD_DATA.match(rel[-1]):
                out.append(path)
    return sorted(out)


def _remove(root: Output, paths: list[str]) -> int:
    removed = 0
    for path in paths:
        try:
            root.fs.rm_file(path)
            removed += 1
        except FileNotFoundError:
            pass
    return removed


def _remove_layout(root: Output) -> str:
    """The manifests first (the output is Delta-only from then on), then the old data files."""
    manifests = len(_manifest_paths(root))
    root.fs.rm(root.path(LEGACY_MANIFESTS), recursive=True)
    files = _remove(root, _old_data_files(root))
    return f"removed the manifest layout: {manifests} manifest(s), {files} data file(s)"


# -- the command -------------------------------------------------------------------------------------


def migrate(uri: str, storage_options: Mapping[str, Any] | None = None) -> list[str]:
    """Convert the output at ``uri`` from the manifest layout into Delta tables; returns the lines to print
    (one per shard converted or problem met, then a summary). Raises ``OutputError`` (one line) when there is
    no output, when its shards cannot share one partitioning, or when the converted tables do not verify
    (then nothing of the old layout is removed)."""
    root = Output(uri, storage_options)
    fs = root.fs
    if not fs.exists(root.root):
        raise OutputError(f"output {uri} does not exist")
    fs.invalidate_cache()
    if not fs.exists(root.path(LEGACY_MANIFESTS)):
        if fs.exists(root.path("videos", "_delta_log")):
            leftovers = _remove(root, _old_data_files(root))  # a migration killed while removing them
            done = [f"removed {leftovers} leftover data file(s) of the manifest layout"] if leftovers else []
            return done + [f"nothing to migrate: {uri} is already in Delta tables"]
        return [f"nothing to migrate: {uri} holds no tables in the manifest layout"]

    lines: list[str] = []
    shards: list[OldShard] = []
    for path in _manifest_paths(root):
        shard, problem = _read_manifest(root, path)
        if problem:
            lines.append(problem)
        if shard is not None:
            shards.append(shard)
    partitions = sorted({s.partition for s in shards}, key=lambda p: p or "")
    columns = {p.split("=", 1)[0] if p else None for p in partitions}
    if len(columns) > 1:
        have = ", ".join(p or "no partition" for p in partitions)
        raise OutputError(f"output {uri} holds shards of {have}: Delta tables have one partitioning; move the shards "
                          "of the others to an output of their own first")

    with contextlib.ExitStack() as leases:
        held = [leases.enter_context(Lease(Output(uri, storage_options, p), new_owner(RUN)))
                for p in dict.fromkeys([None, *partitions])]
        converted, total_videos, dropped = 0, 0, 0
        for partition in partitions:
            output = Output(uri, storage_options, partition)
            done, videos, rows = _migrate_partition(root, output, [s for s in shards if s.partition == partition],
                                                    lines, held)
            converted, total_videos, dropped = converted + done, total_videos + videos, dropped + rows
        for lease in held:
            lease.check()
        lines.append(_remove_layout(root))
    lines.append(f"migrated {converted} shard(s), {total_videos} videos ({dropped} duplicate rows dropped) into "
                 f"Delta tables at {uri}")
    return lines


def _migrate_partition(
    root: Output, output: Output, shards: list[OldShard], lines: list[str], leases: list[Lease],
) -> tuple[int, int, int]:
    """Convert, verify and close one partition; returns (shards holding rows, videos, duplicate rows dropped)."""
    key = run_key(output.partition)
    usable = []
    for shard in sorted(shards, key=lambda s: s.order):
        try:
            _survey(root, shard)
            usable.append(shard)
        except _Unusable as exc:
            lines.append(f"skipped shard {shard.shard_id}{_where(output.partition)}: {exc}; the next run processes "
                         "its videos again")
    dropped = _assign(usable)
    holding = [s for s in usable if s.kept]
    videos = sum(len(s.kept) for s in holding)
    records = {(c.run, c.shard_id) for c in read_commits(output)}
    if (key, VERIFIED) in records:  # verified by a migration killed while removing the old layout
        return len(holding), videos, dropped

    dims = collections.Counter(s.record.embedding_dim for s in holding if s.record.embedding_dim)
    if holding:  # the tables take the usual width in their schema (the first shard may have had no model)
        ensure_tables(output, dims.most_common(1)[0][0] if dims else None)
    # What Delta holds already: the shards an earlier, killed migration committed, and what runs committed
    # since (an output half migrated is open to them). A run's rows are newer than any old shard's.
    held = {v: c.shard_id for v, c in committed_videos(output)[1].items()}
    videos = output.table("videos")
    for shard in usable:
        where = f"shard {shard.shard_id}{_where(output.partition)}"
        lost = len(set(shard.video_ids)) - len(shard.kept)
        done = shard_committed(output, key, shard.shard_id)
        ours = videos is not None and videos.transaction_version(app_id(key, shard.shard_id)) is not None
        later = {v for v in shard.kept if v in held and (held[v] != shard.shard_id or not ours)}
        shard.kept -= later
        note = "".join([f"; {lost} video(s) left to newer shards" if lost else "",
                        f"; {len(later)} video(s) left to later runs" if later else ""])
        if not shard.kept:
            lines.append(f"{where}: nothing to convert, its videos were committed again since{note}")
            continue
        if done:  # committed with its record (one killed in between is not done: it is committed again)
            lines.append(f"{where}: already migrated{note}")
            continue
        for lease in leases:
            lease.check()
        try:
            tables = _shard_tables(root, shard)
        except _Unusable as exc:  # it was readable a moment ago
            raise OutputError(f"{where}: {exc}; nothing of the manifest layout was removed") from None
        record = _commit(output, tables, shard.record)
        rows = {name: tables[name].num_rows for name in TABLES}
        if record is None or record.rows.get("videos") != len(shard.kept):
            # A run committed some of these videos in its own shards while this commit was made: its rows are
            # newer, and commit_shard left those videos out (the rows counted here are what it committed).
            now = committed_videos(output)[1]
            shard.kept = {v for v in shard.kept if v in now and now[v].shard_id == shard.shard_id}
            rows = dict(record.rows) if record is not None else dict.fromkeys(TABLES, 0)
            note += f"; {len(tables['videos']) - len(shard.kept)} video(s) left to a run committing meanwhile"
        lines.append(f"{where}: {rows['videos']} video(s), {rows['keyframes']} keyframe(s), {rows['segments']} "
                     f"segment(s), {rows['summaries']} summaries{note}")

    holding = [s for s in usable if s.kept]
    problem, others = _verify(output, holding)
    if problem:
        raise OutputError(f"migration of {root.uri} did not verify, the manifest layout is kept: {problem}")
    if others:
        lines.append(f"{others} video(s){_where(output.partition)} committed by later runs are kept as they are")
    append_record(output, CommitRecord(kind="migrate", run=key, shard_id=VERIFIED), rows=_kept_total(holding))
    return len(holding), sum(len(s.kept) for s in holding), dropped


def _kept_total(shards: list[OldShard]) -> dict[str, int]:
    return {name: sum(_kept_rows(s)[name] for s in shards) for name in TABLES}


def _kept_rows(shard: OldShard) -> dict[str, int]:
    return {name: sum(_counts(shard, name).values()) for name in TABLES}


__all__ = ["migrate", "run_key"]
