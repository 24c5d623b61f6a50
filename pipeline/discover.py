"""List media under a URI or manifest; stable video ids and input fingerprints; skip what is done; shard."""
from __future__ import annotations

import csv
import datetime as dt
import errno
import hashlib
import io
import logging
import os
import stat
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import fsspec
from fsspec.implementations.local import LocalFileSystem


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


# A local entry that is not a regular file, or cannot be read, is never opened for hashing: it becomes an item
# whose input fingerprint names the problem (as "missing" does), which the decode stage turns into a failed row.
_KINDS = (
    (stat.S_ISFIFO, "fifo", "FIFO"),
    (stat.S_ISSOCK, "socket", "socket"),
    (stat.S_ISCHR, "char-device", "character device"),
    (stat.S_ISBLK, "block-device", "block device"),
    (stat.S_ISDIR, "directory", "directory"),
)
_PROBLEMS = {
    "symlink-loop": "a symlink loop (too many levels of symbolic links)",
    "dangling-symlink": "a dangling symlink (its target does not exist)",
    "unreadable": "cannot be read (permission denied)",
}


def input_problem(fingerprint: str) -> str | None:
    """What is wrong with an input whose fingerprint names a problem (one line, for a failed row or a
    warning); None for a usable input's fingerprint. Not "missing": the decode stage words that one."""
    if fingerprint.startswith("not-regular:"):
        kind = fingerprint.split(":", 1)[1]
        label = next((label for _, k, label in _KINDS if k == kind), None)
        return f"not a regular file ({label})" if label else "not a regular file"
    if fingerprint.startswith("unreadable:"):
        code = getattr(errno, fingerprint.split(":", 1)[1].upper(), None)
        return f"cannot be read ({os.strerror(code).lower() if isinstance(code, int) else 'error'})"
    return _PROBLEMS.get(fingerprint)


class _Unusable(Exception):
    """A local entry that is not hashed; ``fingerprint`` names why."""

    def __init__(self, fingerprint: str):
        super().__init__(fingerprint)
        self.fingerprint = fingerprint


def _is_local(fs) -> bool:
    return isinstance(fs, LocalFileSystem)


def _not_regular(mode: int) -> str | None:
    """The fingerprint of a non-regular file's mode; None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    return "not-regular:" + next((kind for test, kind, _ in _KINDS if test(mode)), "other")


def _os_error(path: str, exc: OSError) -> _Unusable:
    if exc.errno == errno.ELOOP:
        return _Unusable("symlink-loop")
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return _Unusable("dangling-symlink" if os.path.islink(path) else "missing")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return _Unusable("unreadable")
    return _Unusable("unreadable:" + errno.errorcode.get(exc.errno or 0, "error").lower())


def _local_problem(path: str) -> str | None:
    """The fingerprint naming why a local path cannot be hashed, or None for a regular file; opens nothing."""
    try:
        _check_local(path)
    except _Unusable as exc:
        return exc.fingerprint
    except OSError as exc:
        return _os_error(path, exc).fingerprint
    return None


def _check_local(path: str) -> None:
    """Raise ``_Unusable`` (or OSError) unless ``path`` is (a symlink to) a regular file; opens nothing."""
    problem = _not_regular(os.stat(path).st_mode)  # follows symlinks: a link to a regular file is fine
    if problem:
        raise _Unusable(problem)


def _open_local(path: str):
    """Open a local regular file for reading. Never blocks on a FIFO swapped in since it was checked (opened
    non-blocking), and refuses anything the opened descriptor shows is not a regular file."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags)
    try:
        problem = _not_regular(os.fstat(fd).st_mode)
        if problem:
            raise _Unusable(problem)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


# Files up to this size are hashed whole; larger ones by their head, their tail and evenly spaced blocks
# between (3 MiB read, however long the video): an edit changes the size, the container's index at one end,
# or a sampled block.
WHOLE_HASH_BYTES = 4 * 1024**2
_END_BYTES = 1024**2
_SAMPLES, _SAMPLE_BYTES = 16, 64 * 1024


def _content_hash(fs, path: str, size: int) -> str:
    """Never reads more than ``size`` bytes (the listed size): a file that grows is not followed."""
    digest = hashlib.sha256()
    with (_open_local(path) if _is_local(fs) else fs.open(path, "rb")) as f:
        if size <= WHOLE_HASH_BYTES:
            digest.update(f.read(size) if size > 0 else b"")
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
    uri = fs.unstrip_protocol(path)
    if not _is_local(fs):  # object stores hold regular objects only
        info = info or fs.info(path)
        fingerprint = _fingerprint(fs, path, info)
        return MediaItem(uri, video_id_for(uri), info.get("size"), _modified(info), fingerprint)
    try:
        _check_local(path)
        info = info or fs.info(path)
        fingerprint = _fingerprint(fs, path, info)
    except (_Unusable, OSError) as exc:
        problem = exc.fingerprint if isinstance(exc, _Unusable) else _os_error(path, exc).fingerprint
        # Not read (or not read through): a failed row, which the decode stage words, so every input still
        # ends as exactly one row.
        if problem != "missing":
            log.warning("skipping %s: %s; it becomes a failed row", path, input_problem(problem))
        return MediaItem(uri, video_id_for(uri), None, None, problem)
    return MediaItem(uri, video_id_for(uri), info.get("size"), _modified(info), fingerprint)


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
    try:
        with fs.open(path, "rt") as f:
            text = f.read()
    except OSError as exc:
        if not _is_local(fs):
            raise
        raise InputError(f"cannot read manifest {path}: {(exc.strerror or str(exc)).lower()}") from None
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
    # Local listings report what is not a regular file (a FIFO, a device, a symlink) as type "other": those
    # named like a video become failed rows through ``_item``, which never opens them. A folder walk does not
    # follow symlinks (a loop is just an entry); directories are walked, or left out of a glob.
    listed = ("file", "other") if _is_local(fs) else ("file",)
    if any(ch in path for ch in "*?["):
        for p, info in fs.glob(path, detail=True).items():
            if info.get("type") in listed and _is_video(p):
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
            if not _is_local(efs) and not efs.exists(epath):
                # Listed but missing: it still becomes a (failed) row, so nothing in the manifest is lost.
                # (``_item`` words a local entry itself: missing, not a regular file, unreadable.)
                euri = efs.unstrip_protocol(epath)
                items[euri] = MediaItem(euri, video_id_for(euri), None, None, "missing")
                continue
            item = _item(efs, epath)
            items[item.uri] = item
    elif fs.isfile(path) or (_is_local(fs) and os.path.lexists(path)):
        # A single file; named explicitly, so a local one that is not a regular file is a failed row.
        if not fs.isfile(path) and path.lower().endswith(MANIFEST_EXTENSIONS):
            problem = input_problem(_local_problem(path) or "") or "not found"
            raise InputError(f"cannot read manifest {uri}: {problem}")
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
    committed: Mapping[str, Any],
    config_fingerprint: str,
    shard_size: int,
    force: bool = False,
    retry_failed: bool = False,
) -> tuple[list[Shard], int]:
    """Decide which items to (re)process and group them into shards. Returns ``(shards, skipped)``.

    ``committed``: video id -> what the ``videos`` table holds for it (``pipeline.store.CommittedVideo``:
    input and config fingerprints, status, shard). An item is done when it is committed with the same input
    and config fingerprints (and, with ``retry_failed``, it did not fail: a failure may have been passing,
    like a storage timeout). An item a shard holds is redone in that same shard, alone or with the others
    redone: the commit replaces just those videos' rows of the shard, so no row is duplicated and no shard
    rewritten whole for one video. New items form new shards.
    """
    def pending(item: MediaItem) -> bool:
        held = committed.get(item.video_id)
        return (
            force or held is None
            or held.input_fingerprint != item.input_fingerprint
            or held.config_fingerprint != config_fingerprint
            or (retry_failed and held.status == "failed")
        )

    todo = [i for i in items if pending(i)]
    regroup: dict[str, list[MediaItem]] = {}
    fresh: list[MediaItem] = []
    for item in todo:
        held = committed.get(item.video_id)
        (regroup.setdefault(held.shard_id, []) if held else fresh).append(item)
    shards = [Shard(sid, tuple(sorted(group, key=lambda i: i.uri))) for sid, group in sorted(regroup.items())]
    for start in range(0, len(fresh), shard_size):
        chunk = tuple(fresh[start : start + shard_size])
        shards.append(Shard(shard_id_for(i.video_id for i in chunk), chunk))
    return shards, len(items) - len(todo)
