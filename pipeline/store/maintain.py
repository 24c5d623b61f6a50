"""Maintenance: compact small files, drop rows a crash left without their ``videos`` row, vacuum.

One commit per shard per table is hundreds of thousands of small files at archive scale. Compaction
(``optimize.compact``) rewrites them into few large ones in commits that change no data, so a reader pinned
to an older version reads on undisturbed; vacuum then deletes the files no version within the retention
references (and files of writers that died before committing), so a reader pinned less than the retention
ago never loses a file. A shard whose writer died between its children's commits and its ``videos`` commit
left keyframes, segments or summaries without a ``videos`` row: older than the retention (no live writer
is that slow), they are deleted.
"""
from __future__ import annotations

import datetime as dt
import logging
import math
import random
import time
from dataclasses import dataclass
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc
from deltalake.exceptions import CommitFailedError

from pipeline.store.commit import WRITER, append_record
from pipeline.store.output import COMMITS_TABLE, Output, OutputError, quote
from pipeline.store.snapshot import key_columns, row_keys
from schemas import COMMIT_ORDER
from schemas.commit import CommitRecord

log = logging.getLogger(__name__)

RETENTION_HOURS = 168  # Delta's default: a reader pinned to a version younger than this keeps its files


@dataclass(frozen=True)
class TableMaintenance:
    table: str
    files_before: int
    files_after: int
    stray_rows: int  # videos (per shard) whose rows have no videos row in their shard, deleted
    vacuumed: int  # files deleted (or, on a dry run, that would be)


def stray_rows(output: Output, table: str, older_than: dt.datetime) -> pa.Table:
    """``video_id`` and ``shard_id`` of ``table``'s rows that have no ``videos`` row in their shard, processed
    before ``older_than``. A shard killed between its children's commits and its ``videos`` commit left them;
    the video may have been committed since in another shard (planned with other inputs), and its children
    there are its rows: these are not."""
    videos, found = output.table("videos"), output.table(table)
    key = key_columns(videos)
    if videos is None or found is None:
        return pa.table({c: pa.array([], pa.string()) for c in key})
    held = row_keys(key, output.dataset("videos", found=videos).to_table(columns=key))
    rows = output.dataset(table, found=found).to_table(columns=[*key, "processed_at"])
    cutoff = pa.scalar(older_than, pa.timestamp("us", tz="UTC"))
    mask = pc.and_(pc.invert(pc.is_in(row_keys(key, rows), value_set=held)), pc.less(rows["processed_at"], cutoff))
    return rows.filter(mask).select(key)


def maintain(
    output: Output, *, retention_hours: float = RETENTION_HOURS, dry_run: bool = False, run: str = "maintain",
) -> list[TableMaintenance]:
    """Compact every table, delete stray children older than the retention, vacuum; then a commit record
    naming the new versions, which readers pin from now on."""
    if output.table("videos") is None:
        raise OutputError(f"no reelscope tables under {output.uri}")
    cutoff = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=retention_hours)
    done = []
    for name in (*COMMIT_ORDER, COMMITS_TABLE):
        table = output.table(name)
        if table is None:
            continue
        before = len(table.file_uris())
        stray = 0
        if name in COMMIT_ORDER[:-1]:
            shards: dict[tuple, set[str]] = {}  # (shard, partition values...) -> videos
            for row in stray_rows(output, name, cutoff).to_pylist():
                shards.setdefault(tuple((c, row[c]) for c in row if c != "video_id"), set()).add(row["video_id"])
            stray = sum(len(ids) for ids in shards.values())
            if shards and not dry_run:
                which = " OR ".join(
                    "(" + " AND ".join(f"{c} = {quote(v)}" for c, v in where)
                    + f" AND video_id IN ({', '.join(quote(i) for i in sorted(ids))}))"
                    for where, ids in sorted(shards.items()))
                predicate = f"({which}) AND processed_at < '{cutoff.isoformat()}'"
                _retried(lambda: output.table(name).delete(predicate))
                log.warning("%s: deleted the rows of %d video(s) that have no videos row in their shard", name, stray)
        if not dry_run:
            _retried(lambda: output.table(name).optimize.compact(writer_properties=WRITER))
        # full: also the files no version names (a writer killed before its commit left them); delta-rs's
        # default looks only at the files the log removed.
        vacuumed = output.table(name).vacuum(
            retention_hours=math.ceil(retention_hours), dry_run=dry_run, enforce_retention_duration=False, full=True,
        )
        done.append(TableMaintenance(name, before, len(output.table(name).file_uris()), stray, len(vacuumed)))
    if not dry_run:
        append_record(output, CommitRecord(kind="maintain", run=run, shard_id="maintain"))
    return done


def _retried(operation: Callable[[], object], attempts: int = 10) -> None:
    """``operation`` again on the new state when a shard commit came in between (optimize and delete are
    not idempotent appends: delta-rs leaves their conflicts to the caller)."""
    for attempt in range(attempts):
        try:
            operation()
            return
        except (CommitFailedError, OSError):  # OSError: a lost reply; doing it again on the new state is as good
            if attempt == attempts - 1:
                raise
            time.sleep(random.uniform(0.05, 0.3) * (attempt + 1))
