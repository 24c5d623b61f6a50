"""List media under a URI or manifest; stable video ids and input fingerprints; skip what is done; shard."""
from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import logging
import os
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import fsspec

from schemas.manifest import ShardManifest

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = frozenset(
    ".mp4 .m4v .mov .mkv .webm .avi .mpg .mpeg .ts .mts .m2ts .flv .wmv .3gp .ogv".split()
)
MANIFEST_EXTENSIONS = (".csv", ".txt", ".lst", ".parquet")


class InputError(ValueError):
    """The input cannot be listed; the message is one line meant for the user."""


@dataclass(frozen=True)
class MediaItem:
    uri: str  # canonical: a protocol-qualified URI (file:///abs/path, s3://bucket/key)
    video_id: str  # stable across runs: derived from the URI
    size: int | None
    modified: dt.datetime | None
    input_fingerprint: str  # changes when the object changes (size, mtime, etag)


def video_id_for(uri: str) -> str:
    return hashlib.sha256(uri.encode()).hexdigest()[:16]


def _modified(info: Mapping[str, Any]) -> dt.datetime | None:
    for key in ("LastModified", "last_modified", "mtime", "updated", "created"):
        value = info.get(key)
        if value is None:
            continue
        if isinstance(value, dt.datetime):
            return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
        if isinstance(value, (int, float)):
            return dt.datetime.fromtimestamp(value, tz=dt.timezone.utc)
        if isinstance(value, str):
            try:
                parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                continue
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)
    return None


def _item(fs, path: str, info: Mapping[str, Any] | None = None) -> MediaItem:
    info = info or fs.info(path)
    uri = fs.unstrip_protocol(path)
    size = info.get("size")
    modified = _modified(info)
    etag = info.get("ETag") or info.get("etag") or ""
    raw = f"{size}|{modified.isoformat() if modified else ''}|{etag}"
    return MediaItem(
        uri=uri,
        video_id=video_id_for(uri),
        size=size,
        modified=modified,
        input_fingerprint=hashlib.sha256(raw.encode()).hexdigest()[:16],
    )


def _is_video(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in VIDEO_EXTENSIONS


def _read_manifest(fs, path: str) -> list[str]:
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        with fs.open(path, "rb") as f:
            table = pq.read_table(f)
        if "uri" not in table.column_names:
            raise InputError(f"manifest {path} has no 'uri' column")
        return [u for u in table.column("uri").to_pylist() if u]
    with fs.open(path, "rt") as f:
        text = f.read()
    if path.endswith(".csv"):
        rows = list(csv.DictReader(io.StringIO(text)))
        if rows and "uri" not in rows[0]:
            raise InputError(f"manifest {path} has no 'uri' column")
        return [r["uri"].strip() for r in rows if r.get("uri", "").strip()]
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def discover(uri: str, storage_options: Mapping[str, Any] | None = None) -> list[MediaItem]:
    """Media under a folder, glob, URI prefix or manifest file, sorted by URI, each listed once."""
    opts = dict(storage_options or {})
    try:
        fs, path = fsspec.core.url_to_fs(uri, **opts)
    except (ImportError, ValueError) as exc:
        raise InputError(f"cannot open input {uri}: {exc}") from None
    items: dict[str, MediaItem] = {}
    if any(ch in path for ch in "*?["):
        for p, info in fs.glob(path, detail=True).items():
            if info.get("type") == "file" and _is_video(p):
                item = _item(fs, p, info)
                items[item.uri] = item
    elif fs.isdir(path):
        for p, info in fs.find(path, detail=True).items():
            if _is_video(p):
                item = _item(fs, p, info)
                items[item.uri] = item
            else:
                log.debug("ignoring %s: not a known video extension", p)
    elif fs.isfile(path) and path.lower().endswith(MANIFEST_EXTENSIONS):
        for entry in _read_manifest(fs, path):
            efs, epath = fsspec.core.url_to_fs(entry, **opts)
            if not efs.exists(epath):
                # Listed but missing: it still becomes a (failed) row, so nothing in the manifest is lost.
                euri = efs.unstrip_protocol(epath)
                items[euri] = MediaItem(euri, video_id_for(euri), None, None, "missing")
                continue
            item = _item(efs, epath)
            items[item.uri] = item
    elif fs.isfile(path):
        item = _item(fs, path)
        items[item.uri] = item
    else:
        raise InputError(f"input not found: {uri}")
    return [items[k] for k in sorted(items)]


def in_interval(items: Iterable[MediaItem], start: dt.datetime, end: dt.datetime) -> list[MediaItem]:
    """Items whose modification time falls in [start, end): what arrived in a scheduled run's interval."""
    return [i for i in items if i.modified is not None and start <= i.modified < end]


def shard_id_for(video_ids: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(sorted(video_ids)).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Shard:
    shard_id: str
    items: tuple[MediaItem, ...]


def plan_shards(
    items: list[MediaItem],
    committed: list[ShardManifest],
    config_fingerprint: str,
    shard_size: int,
    force: bool = False,
    retry_failed: bool = False,
) -> tuple[list[Shard], int]:
    """Decide which items to (re)process and group them into shards. Returns ``(shards, skipped)``.

    An item is done when a committed manifest holds it with the same input and config fingerprints (and,
    with ``retry_failed``, it did not fail there: a failure may have been passing, like a storage timeout).
    Items that a committed shard already holds are regrouped into that same shard, so a rewrite replaces
    the shard's files under the same names and no row is ever duplicated; new items form new shards.
    """
    by_video: dict[str, tuple] = {}  # video id -> (its VideoEntry, the manifest holding it)
    for manifest in committed:
        for v in manifest.videos:
            by_video[v.video_id] = (v, manifest)
    current = {i.video_id: i for i in items}
    pending = [
        i
        for i in items
        if force
        or i.video_id not in by_video
        or by_video[i.video_id][0].input_fingerprint != i.input_fingerprint
        or by_video[i.video_id][1].config_fingerprint != config_fingerprint
        or (retry_failed and by_video[i.video_id][0].status == "failed")
    ]
    skipped = len(items) - len(pending)
    shards: list[Shard] = []
    regroup: dict[str, list[MediaItem]] = {}
    fresh: list[MediaItem] = []
    for item in pending:
        old = by_video.get(item.video_id)
        (regroup.setdefault(old[1].shard_id, []) if old else fresh).append(item)
    for old_shard, group in sorted(regroup.items()):
        # Every still-present member of the old shard is redone with it, so its files stay whole.
        members = {i.video_id for i in group}
        for manifest in committed:
            if manifest.shard_id == old_shard:
                for v in manifest.videos:
                    if v.video_id in current and v.video_id not in members:
                        group.append(current[v.video_id])
                        members.add(v.video_id)
                        skipped -= 1
        shards.append(Shard(old_shard, tuple(sorted(group, key=lambda i: i.uri))))
    for start in range(0, len(fresh), shard_size):
        chunk = tuple(fresh[start : start + shard_size])
        shards.append(Shard(shard_id_for(i.video_id for i in chunk), chunk))
    return shards, skipped
