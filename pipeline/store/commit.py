"""Shard commits: one Delta transaction per table, children first and ``videos`` last, each idempotent.

A shard's rows replace the rows of its videos in that shard (``shard_id = S AND video_id IN (…)``, inside
the partition), so a retry, a redo or a second run of the same plan never duplicates a row, and the
shard's other videos keep theirs. Every commit carries the application transaction ``reelscope:<run>:<shard>``
at a fresh version: when a reply is lost and the commit fails as "concurrent", the log tells whether the
commit landed (``DeltaTable.transaction_version``), and nothing is written twice or removed.

Two runs that planned the same video into different shards (they listed different inputs) would each
commit it. So before each ``videos`` commit the writer reads what others committed since its plan and leaves
out the videos another shard took meanwhile (rewriting its children without them); and every ``videos``
commit of a partition also carries one shared application id, which makes two of them at the same moment
conflict, so the loser looks again. After the ``videos`` commit a commit record (``_commits``) names the
versions of the four tables, which readers pin.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import posixpath
import random
import time
import urllib.parse
from typing import Any, Callable, Iterable, Mapping

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from deltalake import CommitProperties, DeltaTable, Transaction, WriterProperties, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError

from pipeline.store.output import COMMITS_TABLE, Output, OutputError, quote
from pipeline.store.snapshot import read_commits
from schemas import COMMIT_ORDER, EMBEDDING_DIM_KEY, SCHEMA_VERSION, TABLES
from schemas.commit import COMMITS, CommitRecord

log = logging.getLogger(__name__)

ATTEMPTS = 20  # rounds lost to other writers of the same shard or partition before giving up
IO_ATTEMPTS = 3  # writes that failed on the way (a reset connection) and did not land
WRITER = WriterProperties(compression="ZSTD")


def app_id(run_key: str, shard_id: str) -> str:
    return f"reelscope:{run_key}:{shard_id}"


def commit_key(run: str, plan_id: str) -> str:
    """What a planned run's commits are made under: its run key and this listing of it, so that a DAG run
    cleared and run again (same run id) redoes what its new plan says instead of finding it committed."""
    return f"{run}.{plan_id}" if plan_id else run


def _serial_id(output: Output) -> str:
    return f"reelscope:videos:{output.partition or ''}"


def _now_version() -> int:
    return time.time_ns() // 1000  # microseconds: every attempt of every writer has its own


def table_version(output: Output, table: str) -> int:
    """The table's current version, -1 when it does not exist yet (what a plan records)."""
    found = output.table(table)
    return -1 if found is None else found.version()


# -- tables ------------------------------------------------------------------------------------------


def ensure_tables(
    output: Output, embedding_dim: int | None, names: tuple[str, ...] = (*TABLES, COMMITS_TABLE),
) -> dict[str, DeltaTable]:
    """Create the four tables and ``_commits`` (or ``names``) where missing, with the explicit schemas;
    refuse an output whose tables are partitioned otherwise than this writer's partition. Returns them,
    loaded (a commit made on a loaded table brings it to the new version)."""
    loaded = {}
    for name in names:
        found = loaded[name] = output.current(name)
        if found is None:
            _create(output, name, embedding_dim)
            loaded[name] = output.current(name)
            continue
        columns = found.metadata().partition_columns
        wanted = [output.partition_column] if output.partition and name != COMMITS_TABLE else []
        if name != COMMITS_TABLE and list(columns) != wanted:
            have = f"partitioned by {', '.join(columns)}" if columns else "not partitioned"
            need = f"partition {output.partition}" if output.partition else "no partition"
            raise OutputError(f"the {name} table of {output.uri} is {have}; this run writes {need}")
    return loaded


def _create(output: Output, name: str, embedding_dim: int | None) -> None:
    if name == COMMITS_TABLE:
        schema, partition_by = COMMITS, None
    else:
        schema = output.schema(name, embedding_dim)
        partition_by = [output.partition_column] if output.partition else None
        if name == "keyframes" and embedding_dim:
            i = schema.get_field_index("embedding")
            schema = schema.set(i, schema.field(i).with_metadata({EMBEDDING_DIM_KEY: str(embedding_dim)}))
    try:
        DeltaTable.create(output.table_uri(name), schema, mode="ignore", partition_by=partition_by,
                          name=name, storage_options=output.delta_options)
    except (DeltaError, OSError):  # OSError: a lost reply (the table may be there all the same)
        if output.table(name) is None:  # not a creator that lost the race to another: a real failure
            raise


# -- what others committed ---------------------------------------------------------------------------


def _log_entries(output: Output, table: str, after: int, upto: int) -> Iterable[list[dict]]:
    """The actions of each log entry in ``(after, upto]``."""
    folder = output.path(table, "_delta_log")
    for version in range(after + 1, upto + 1):
        key = ("log", table, version)  # a log entry never changes: a run's later shards read it once
        if key not in output._current:
            try:
                text = output.fs.cat_file(posixpath.join(folder, f"{version:020d}.json")).decode()
            except FileNotFoundError:
                raise OutputError(
                    f"the log of {output.uri}/{table} no longer holds version {version} (cleaned up since this "
                    "run was planned); plan the run again"
                ) from None
            output._current[key] = [json.loads(line) for line in text.splitlines() if line.strip()]
        yield output._current[key]


def taken_elsewhere(
    output: Output, since: int, shard_id: str, ids: set[str], own_app: str, found: DeltaTable | None = None,
) -> dict[str, str]:
    """Of ``ids``, the videos that other writers committed into other shards of this partition after
    version ``since`` of ``videos`` (up to the version of ``found``, the table as read; default: now):
    video id -> the shard that holds it now."""
    found = found if found is not None else output.table("videos")
    if found is None or found.version() <= since:
        return {}
    files = []
    own_run = own_app.rsplit(":", 1)[0] + ":"  # the run's other shards hold other videos: not read
    for actions in _log_entries(output, "videos", since, found.version()):
        if any(a.get("txn", {}).get("appId", "").startswith(own_run) for a in actions):
            continue
        for a in actions:
            add = a.get("add")
            if add and add.get("dataChange", True) and _in_partition(output, add.get("partitionValues") or {}):
                files.append(output.path("videos", urllib.parse.unquote(add["path"])))
    taken: dict[str, str] = {}
    for path in files:
        try:
            with output.fs.open(path, "rb") as f:
                rows = pq.read_table(f, columns=["video_id", "shard_id"])
        except FileNotFoundError:
            # Compacted and vacuumed since (the plan is older than the retention): its rows now sit in files
            # that changed no data, which say nothing of who committed them.
            raise OutputError(f"files committed to {output.uri} since this run was planned were vacuumed; "
                              "plan the run again") from None
        mask = pc.and_(pc.is_in(rows["video_id"], pa.array(sorted(ids), pa.string())),
                       pc.not_equal(rows["shard_id"], shard_id))
        for row in rows.filter(mask).to_pylist():
            taken[row["video_id"]] = row["shard_id"]
    return taken


def _in_partition(output: Output, values: Mapping[str, str | None]) -> bool:
    return not output.partition or values.get(output.partition_column) == output.partition_value


# -- one table ---------------------------------------------------------------------------------------


def _predicate(output: Output, shard_id: str, ids: Iterable[str]) -> str:
    parts = [output.partition_predicate(), f"shard_id = {quote(shard_id)}",
             f"video_id IN ({', '.join(quote(i) for i in sorted(ids)) or quote('')})"]
    return " AND ".join(p for p in parts if p)


def _landed(output: Output, table: str, app: str, version: int) -> bool:
    found = output.table(table)
    return found is not None and found.transaction_version(app) == version


def write_rows(
    output: Output, table: str, rows: pa.Table | Callable[[], Any], predicate: str, app: str, *, serial: bool = False,
    metadata: Mapping[str, str] | None = None, mode: str = "overwrite", read: DeltaTable | None = None,
) -> None:
    """One commit replacing the rows matching ``predicate`` with ``rows`` (or appending), carrying the
    application transaction ``app``. A commit whose reply was lost counts as made; one that lost to a
    concurrent writer is made again on the new state (``serial``: raised, the caller looks again first).
    ``rows`` may be a function giving a fresh Arrow stream for each attempt. ``read``: the table as the
    caller read it; the commit is made on that version, so that a commit of another writer since then that
    carries one of these application ids conflicts (otherwise the commit is made on the newest version)."""
    version = _now_version()
    txns = [Transaction(app, version)] + ([Transaction(_serial_id(output), version)] if serial else [])
    props = CommitProperties(app_transactions=txns, custom_metadata=dict(metadata or {}))
    io_failures = 0
    for attempt in range(ATTEMPTS):
        try:
            write_deltalake(
                read if read is not None else output.table_uri(table), rows() if callable(rows) else rows, mode=mode,
                predicate=predicate if mode == "overwrite" else None,
                partition_by=[output.partition_column] if output.partition and table != COMMITS_TABLE else None,
                storage_options=output.delta_options, writer_properties=WRITER, commit_properties=props,
            )
            return
        except (CommitFailedError, OSError) as exc:
            # A lost reply: delta-rs says OSError (connection reset) or, when its own retry of the log PUT
            # found the version taken, CommitFailedError; either way the log knows whether it landed.
            if _landed(output, table, app, version):
                log.info("commit to %s of %s landed although its reply was lost", table, output.uri)
                return
            lost_race = isinstance(exc, CommitFailedError)
            io_failures += not lost_race
            # A videos commit made again on a newer state would skip the look at what others committed.
            if serial or attempt == ATTEMPTS - 1 or io_failures == IO_ATTEMPTS:
                raise
            if read is not None:
                read.update_incremental()  # the next try is made on the new state
            log.info("commit to %s of %s did not land (%s); writing again", table, output.uri,
                     str(exc).splitlines()[0][:120])
            time.sleep(random.uniform(0.05, 0.2) * (attempt + 1))


# -- a shard -----------------------------------------------------------------------------------------


def shard_committed(output: Output, run_key: str, shard_id: str) -> bool:
    """Whether this run committed this shard already, its commit record included (a retried task then skips
    it; one that died between its ``videos`` commit and the record redoes the shard, replacing its rows)."""
    found = output.table("videos")
    if found is None or found.transaction_version(app_id(run_key, shard_id)) is None:
        return False
    return any(c.run == run_key and c.shard_id == shard_id for c in read_commits(output))


def commit_shard(
    output: Output, tables: Mapping[str, pa.Table], record: CommitRecord, *, planned_version: int,
) -> CommitRecord | None:
    """Commit one shard's rows (``tables``: the four tables, schemas of ``schemas/``) and its commit record.

    ``planned_version``: the ``videos`` version the shard was planned against; videos that other writers
    committed into other shards since are left out (logged). Returns the record written, None when
    nothing was left to commit."""
    shard_id, app = record.shard_id, app_id(record.run, record.shard_id)
    loaded = ensure_tables(output, record.embedding_dim)
    tables = {name: output.with_partition(tables[name]) for name in TABLES}
    ids = set(tables["videos"].column("video_id").to_pylist())
    meta = {"reelscope.run": record.run, "reelscope.shard": shard_id}
    children_written: set[str] | None = None
    io_failures = 0
    for _ in range(ATTEMPTS):
        # The videos commit is made on the very version looked at here: another shard's videos commit that
        # lands meanwhile (while the children are written, say) conflicts with it, and this loop looks again.
        videos = output.table("videos")  # its own: a table kept current for other commits must not move under it
        taken = taken_elsewhere(output, planned_version, shard_id, ids, app, found=videos)
        if taken:
            for video_id, holder in sorted(taken.items()):
                log.warning("video %s of shard %s was committed in shard %s by another run meanwhile; leaving it "
                            "to that shard", video_id, shard_id, holder)
            ids -= set(taken)
            tables = {n: t.filter(pc.is_in(t["video_id"], pa.array(sorted(ids), pa.string()))) for n, t in tables.items()}
        predicate = _predicate(output, shard_id, ids | set(taken))
        if children_written != ids:
            for name in COMMIT_ORDER[:-1]:
                write_rows(output, name, tables[name], predicate, app, metadata=meta, read=loaded[name])
            children_written = set(ids)
        if not ids and not taken:
            return None
        try:
            write_rows(output, "videos", tables["videos"], predicate, app, serial=True, metadata=meta, read=videos)
            break
        except CommitFailedError:
            time.sleep(random.uniform(0.02, 0.2))  # another shard's videos commit won this round: look again
        except OSError:  # did not land (a reset connection, say): look again, a few times
            io_failures += 1
            if io_failures == IO_ATTEMPTS:
                raise
            time.sleep(random.uniform(0.1, 0.5) * io_failures)
    else:
        raise OutputError(f"shard {shard_id} of {output.uri}: could not commit, other writers kept winning")
    if not ids:
        return None
    return append_record(output, record, rows={n: tables[n].num_rows for n in TABLES}, loaded={**loaded, "videos": videos})


def append_record(
    output: Output, record: CommitRecord, rows: Mapping[str, int] | None = None,
    loaded: Mapping[str, DeltaTable | None] | None = None,
) -> CommitRecord:
    """Append ``record`` to ``_commits`` with the tables' versions now (``videos`` read first, so the
    children's versions hold every row of every committed ``videos`` row). ``loaded``: the tables as a
    caller has them loaded, brought up to date here rather than loaded again."""
    versions = {}
    for name in COMMIT_ORDER[::-1]:  # videos first
        found = (loaded or {}).get(name)
        if found is None:
            versions[name] = table_version(output, name)
        else:
            found.update_incremental()
            versions[name] = found.version()
    record = dataclasses.replace(
        record, partition=output.partition, schema_version=SCHEMA_VERSION, versions=versions,
        rows=dict(rows or record.rows), committed_at=record.committed_at or dt.datetime.now(dt.timezone.utc).isoformat(),
    )
    commits = (loaded or {}).get(COMMITS_TABLE) or ensure_tables(
        output, record.embedding_dim, (COMMITS_TABLE,))[COMMITS_TABLE]  # also for maintenance of a partitioned output
    write_rows(output, COMMITS_TABLE, pa.Table.from_pylist([record.to_row()], schema=COMMITS), "",
               f"reelscope:commits:{record.run}:{record.shard_id}:{record.kind}", mode="append", read=commits)
    return record


def publish_partition(output: Output, staging: Output, record: CommitRecord) -> CommitRecord:
    """Replace this output's partition with the rows staged for it, one commit per table (children first,
    ``videos`` last): readers see the old partition until then. A retry skips the tables already published
    (the run's application transaction), so a publish killed midway completes on its next try."""
    if not output.partition:
        raise ValueError("only a partition can be replaced")
    app = app_id(record.run, "publish")
    done = [c for c in read_commits(output) if c.kind == "publish" and c.run == record.run]
    if done:  # published already; a kill while the staging tables were being removed left them
        _remove(staging)
        return done[0]
    ensure_tables(output, record.embedding_dim)
    rows = {}
    for name in COMMIT_ORDER:
        source = staging.table(name)
        found = output.table(name)
        if found is not None and found.transaction_version(app) is not None:
            rows[name] = record.rows.get(name, 0)
            continue
        if source is None:
            data = output.schema(name, record.embedding_dim).empty_table()
            rows[name] = 0
        else:
            rows[name] = staging.dataset(name, found=source).count_rows()
            data = lambda name=name, source=source: (  # noqa: E731  (a fresh stream for each attempt)
                staging.dataset(name, found=source).scanner(batch_size=4096).to_reader())
        write_rows(output, name, data, output.partition_predicate(), app,
                   metadata={"reelscope.run": record.run, "reelscope.publish": output.partition})
    published = append_record(output, dataclasses.replace(record, kind="publish"), rows=rows)
    _remove(staging)
    return published


def _remove(staging: Output) -> None:
    if staging.fs.exists(staging.root):
        staging.fs.rm(staging.root, recursive=True)


@dataclasses.dataclass(frozen=True)
class CommittedVideo:
    input_fingerprint: str
    config_fingerprint: str
    status: str
    shard_id: str


def committed_videos(output: Output) -> tuple[int, dict[str, CommittedVideo]]:
    """The ``videos`` version read (-1: no table yet) and what it holds for this output's partition, per
    video (the newest row, should an output damaged before Delta hold a video twice): what planning skips,
    redoes, and which shard a redo goes back to."""
    found = output.table("videos")
    if found is None:
        return -1, {}
    columns = ["video_id", "input_fingerprint", "config_fingerprint", "status", "shard_id", "processed_at"]
    part = ds.field(output.partition_column) == output.partition_value if output.partition else None
    rows = output.dataset("videos", found=found).to_table(columns=columns, filter=part).sort_by("processed_at")
    held = {r["video_id"]: CommittedVideo(r["input_fingerprint"], r["config_fingerprint"], r["status"], r["shard_id"])
            for r in rows.to_pylist()}
    return found.version(), held
