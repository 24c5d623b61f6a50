"""Find and fix what crashes and overlapping runs can leave in an output.

- an unreadable manifest (empty, truncated): removed; its shard's videos are planned again by the next run;
- a video committed in more than one shard (runs that overlapped before the lease existed): the newest
  committed shard keeps it, the older ones are rewritten without its rows (retracted when nothing is left);
- orphan files, which no manifest names (a data file of a write that died before its commit or after its
  swap, a temporary file): removed when older than ``GRACE_S`` or when the lease is free, so that the files
  of a live writer, not committed yet, are never touched.

``reelscope repair`` runs this under the output's lease; a CLI run does it before planning, the Airflow
validate task before validating.
"""
from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import logging
import posixpath
from dataclasses import dataclass

from pipeline.atomic import TEMP_MARK
from pipeline.lease import Lease, lease_is_free, new_owner
from pipeline.tables import MANIFEST_DIR, Output, OutputError
from schemas import TABLES, schema_for
from schemas.manifest import ShardManifest

log = logging.getLogger(__name__)

GRACE_S = 3600.0  # an orphan younger than this may belong to a writer still at work


@dataclass(frozen=True)
class Action:
    kind: str  # unreadable-manifest | duplicate-rows | orphan
    path: str
    detail: str

    def line(self, dry_run: bool) -> str:
        verb = {"unreadable-manifest": "remove", "duplicate-rows": "drop", "orphan": "remove"}[self.kind]
        return f"{'would ' if dry_run else ''}{verb} {self.detail}: {self.path}"


def repair(
    output: Output, *, dry_run: bool = False, lease_free: bool = False, grace_s: float = GRACE_S, quiet: bool = False,
) -> list[Action]:
    """Fix ``output``'s partition (its own shards only); returns what was (or, dry, would be) done, each
    also logged as a warning unless ``quiet``."""
    entries = output.manifest_entries()
    actions = [Action("unreadable-manifest", path, "unreadable manifest") for path, m in entries if m is None]
    manifests = [m for _, m in entries if m is not None]
    actions += _duplicates(output, manifests, dry_run)
    if not dry_run:
        for action in actions:
            if action.kind == "unreadable-manifest":
                output.fs.rm_file(action.path)
    orphans = _orphans(output, manifests, lease_free, grace_s)
    if not dry_run:
        output.remove_files(a.path for a in orphans)
    actions += orphans
    for action in [] if quiet else actions:
        log.warning("repair: %s", action.line(dry_run))
    return actions


def repair_output(uri: str, storage_options=None, *, dry_run: bool = False) -> list[str]:
    """``reelscope repair``: every partition of the output, each under its lease (a dry run takes none and
    treats orphans as a live writer's unless the lease is free). Returns one line per action and a summary."""
    root = Output(uri, storage_options)
    if not root.fs.exists(root.root):
        raise OutputError(f"output {uri} does not exist")
    lines, counts = [], collections.Counter()
    for partition in sorted(_partitions(root), key=lambda p: p or ""):
        output = Output(uri, storage_options, partition)
        if dry_run:
            actions = repair(output, dry_run=True, lease_free=lease_is_free(output), quiet=True)
        else:
            with Lease(output, new_owner("repair")):
                actions = repair(output, lease_free=True, quiet=True)
        lines += [a.line(dry_run) for a in actions]
        counts.update(a.kind for a in actions)
    summary = ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items())) or "nothing to repair"
    lines.append(f"{'dry run: ' if dry_run else ''}{summary} in {uri}")
    return lines


def _partitions(root: Output) -> set[str | None]:
    """The partitions with manifests, and those with data folders only (a first write that died)."""
    found: set[str | None] = {None} | {m.partition for m in root.manifests(all_partitions=True)}
    for name in TABLES:
        try:
            entries = root.fs.ls(root.folder(name), detail=True)
        except FileNotFoundError:
            continue
        found |= {posixpath.basename(e["name"].rstrip("/")) for e in entries if e.get("type") == "directory"}
    return found


def _duplicates(output: Output, manifests: list[ShardManifest], dry_run: bool) -> list[Action]:
    """Drop every video's rows from all but the newest committed shard holding it."""
    newest = sorted(manifests, key=lambda m: (m.committed_at or "", m.shard_id), reverse=True)
    owner: dict[str, str] = {}
    drop: dict[str, set[str]] = collections.defaultdict(set)
    for m in newest:
        for v in m.videos:
            if owner.setdefault(v.video_id, m.shard_id) != m.shard_id:
                drop[m.shard_id].add(v.video_id)
    actions = []
    for m in newest:
        ids = drop.get(m.shard_id)
        if not ids:
            continue
        left = len({v.video_id for v in m.videos} - ids)
        detail = (f"{len(ids)} video(s) of shard {m.shard_id} committed again in a newer shard"
                  f"{'; shard retracted, nothing left' if not left else ''}")
        actions.append(Action("duplicate-rows", output.manifest_path(m.shard_id), detail))
        if not dry_run:
            _drop_videos(output, m, ids, left)
    return actions


def _drop_videos(output: Output, manifest: ShardManifest, ids: set[str], left: int) -> None:
    if not left:
        output.retract(manifest.shard_id)
        return
    dim = manifest.embedding_dim or 1
    empty = {t: (schema_for(t, dim) if t == "keyframes" else schema_for(t)).empty_table() for t in TABLES}
    output.write_shard(manifest.shard_id, empty, dataclasses.replace(manifest, videos=()), drop=ids)


def _listed(output: Output, folder: str) -> list[dict]:
    try:
        return [e for e in output.fs.ls(folder, detail=True) if e.get("type") == "file"]
    except FileNotFoundError:
        return []


def _orphans(output: Output, manifests: list[ShardManifest], lease_free: bool, grace_s: float) -> list[Action]:
    """Files in this partition's folders that no manifest names (temporary files included)."""
    named = {output.file_path(m, t) for m in manifests for t in m.files}
    now = dt.datetime.now(dt.timezone.utc)
    actions = []
    manifests_folder = output.folder(MANIFEST_DIR)
    for folder in [output.folder(t) for t in TABLES] + [manifests_folder]:
        for entry in _listed(output, folder):
            path = entry["name"].rstrip("/")
            base = posixpath.basename(path)
            if path in named or not _maybe_orphan(base, in_manifests=folder == manifests_folder):
                continue
            age = (now - output.fs.modified(path).astimezone(dt.timezone.utc)).total_seconds()
            if lease_free or age >= grace_s:
                actions.append(Action("orphan", path, f"orphan file, {age:.0f} s old"))
    return actions


def _maybe_orphan(name: str, in_manifests: bool) -> bool:
    """A temporary file anywhere, or a shard data file (manifests themselves are read, not orphaned)."""
    return TEMP_MARK in name or (not in_manifests and name.startswith("shard-") and name.endswith(".parquet"))
