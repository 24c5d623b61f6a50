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
    input_fingerprint: str  # changes when the content changes (size + ETag, or size + content hash)


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


# Files up to this size are hashed whole; larger ones by their head, their tail and evenly spaced blocks
# between (3 MiB read, however long the video): an edit changes the size, the container's index at one end,
# or a sampled block.
WHOLE_HASH_BYTES = 4 * 1024**2
_END_BYTES = 1024**2
_SAMPLES, _SAMPLE_BYTES = 16, 64 * 1024


def _content_hash(fs, path: str, size: int) -> str:
    digest = hashlib.sha256()
    with fs.open(path, "rb") as f:
        if size <= WHOLE_HASH_BYTES:
            digest.update(f.read())
        else:
            step = (size - 2 * _END_BYTES) // (_SAMPLES + 1)
            spans = [(0, _END_BYTES), *((_END_BYTES + step * n, _SAMPLE_BYTES) for n in range(1, _SAMPLES + 1)),
                     (size - _END_BYTES, _END_BYTES)]
            for offset, length in spans:
                f.seek(offset)
                digest.update(f.read(length))
    return digest.hexdigest()


def _fingerprint(fs, path: str, info: Mapping[str, Any]) -> str:
    """What changes when the content changes, never the time alone (``sample`` or a copy rewrites identical
    files with new times): the size and the object store's ETag, or the size and a hash of the content."""
    size = info.get("size")
    etag = info.get("ETag") or info.get("etag")
    key = f"etag:{etag}" if etag else f"sha256:{_content_hash(fs, path, size or 0)}"
    return hashlib.sha256(f"{size}|{key}".encode()).hexdigest()[:16]


def _item(fs, path: str, info: Mapping[str, Any] | None = None) -> MediaItem:
    info = info or fs.info(path)
    uri = fs.unstrip_protocol(path)
    return MediaItem(
        uri=uri,
        video_id=video_id_for(uri),
        size=info.get("size"),
        modified=_modified(info),
        input_fingerprint=_fingerprint(fs, path, info),
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

    An item is done when the newest committed manifest holding it (any shard: an output damaged by
    overlapping runs may hold a video twice) holds it with the same input and config fingerprints (and, with
    ``retry_failed``, it did not fail there: a failure may have been passing, like a storage timeout).
    An item a committed shard holds is redone in that same shard, alone or with the others redone: the
    writer keeps the shard's other rows and swaps in the new ones, so no row is duplicated and no shard
    rewritten whole for one video. New items form new shards.
    """
    holder: dict[str, tuple] = {}  # video id -> (its VideoEntry, the newest manifest holding it)
    for manifest in sorted(committed, key=lambda m: (m.committed_at or "", m.shard_id)):
        for v in manifest.videos:
            holder[v.video_id] = (v, manifest)

    def pending(item: MediaItem) -> bool:
        if force or item.video_id not in holder:
            return True
        entry, manifest = holder[item.video_id]
        return (
            entry.input_fingerprint != item.input_fingerprint
            or manifest.config_fingerprint != config_fingerprint
            or (retry_failed and entry.status == "failed")
        )

    todo = [i for i in items if pending(i)]
    regroup: dict[str, list[MediaItem]] = {}
    fresh: list[MediaItem] = []
    for item in todo:
        old = holder.get(item.video_id)
        (regroup.setdefault(old[1].shard_id, []) if old else fresh).append(item)
    shards = [Shard(sid, tuple(sorted(group, key=lambda i: i.uri))) for sid, group in sorted(regroup.items())]
    for start in range(0, len(fresh), shard_size):
        chunk = tuple(fresh[start : start + shard_size])
        shards.append(Shard(shard_id_for(i.video_id for i in chunk), chunk))
    return shards, len(items) - len(todo)
