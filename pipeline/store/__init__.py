"""The output store: Delta tables with the explicit schemas, idempotent shard commits, consistent
snapshots for readers, maintenance and migration (one concern per module)."""
from pipeline.store.commit import (
    CommittedVideo,
    append_record,
    commit_key,
    commit_shard,
    committed_videos,
    ensure_tables,
    publish_partition,
    shard_committed,
    table_version,
)
from pipeline.store.output import COMMITS_TABLE, Output, OutputError, delta_storage_options, open_output
from pipeline.store.snapshot import Snapshot, open_snapshot, read_commits

__all__ = [
    "COMMITS_TABLE",
    "CommittedVideo",
    "Output",
    "OutputError",
    "Snapshot",
    "append_record",
    "commit_key",
    "commit_shard",
    "committed_videos",
    "delta_storage_options",
    "ensure_tables",
    "open_output",
    "open_snapshot",
    "publish_partition",
    "read_commits",
    "shard_committed",
    "table_version",
]
