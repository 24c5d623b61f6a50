"""Compare-and-swap of one small object, on a local disk and on S3: what the output lease rests on.

- ``swap``: a conditional write. With ``token=None`` the name must not exist yet (S3 ``IfNoneMatch="*"``,
  locally a hard link of a finished, fsync'ed temporary file, which fails when the name exists); with a
  token the content must still be the version read (S3 ``IfMatch`` on the ETag, locally a comparison under
  an exclusive ``flock`` of the folder). A lost race raises ``Conflict``.
- ``read_versioned``: the content and the token ``swap`` expects.

Other fsspec filesystems get the plain writes (no conditional ones). The tables themselves need none of
this: Delta's log does the same for them.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import uuid
from dataclasses import dataclass

from fsspec.implementations.local import LocalFileSystem



class Conflict(RuntimeError):
    """A conditional write lost: the name exists already, or its content changed since it was read."""


@dataclass(frozen=True)
class Versioned:
    data: bytes
    token: str  # what ``swap`` compares: the S3 ETag, or a digest of a local file's content


def is_local(fs) -> bool:
    return isinstance(fs, LocalFileSystem)


def _is_s3(fs) -> bool:
    return "s3" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def temp_name(path: str) -> str:
    """A unique sibling of ``path``: renaming within one folder is what makes the write atomic."""
    return f"{path}.tmp-{uuid.uuid4().hex[:12]}"


def _fsync_dir(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_fsynced(path: str, data: bytes) -> None:
    """Write and fsync through ``os``, so that a full disk surfaces here (and can be injected in tests)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _staged(path: str, data: bytes):
    """A fully written, fsync'ed temporary sibling of ``path``; removed if it is still there afterwards."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = temp_name(path)
    try:
        _write_fsynced(tmp, data)
        yield tmp
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def _folder_lock(path: str):
    """An exclusive lock on the folder of ``path``, held by every local compare-and-swap in it."""
    fd = os.open(os.path.dirname(path), os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_versioned(fs, path: str) -> Versioned | None:
    """The content of ``path`` and its version token, or None when there is no such file."""
    try:
        if _is_s3(fs):
            # The ETag first: should the object change in between, the swap with this token fails, which is
            # safe; the other order could pair new content with an old token.
            fs.invalidate_cache(path)
            etag = fs.info(path)["ETag"]
            return Versioned(fs.cat_file(path), etag)
        data = fs.cat_file(path)
    except FileNotFoundError:
        return None
    return Versioned(data, _digest(data))


def _s3_conflict(exc: OSError) -> bool:
    cause = exc.__cause__
    code = getattr(cause, "response", {}).get("Error", {}).get("Code") if cause is not None else None
    return isinstance(exc, (FileExistsError, FileNotFoundError)) or code in (
        "PreconditionFailed", "ConditionalRequestConflict",
    )


def _swap_s3(fs, path: str, data: bytes, token: str | None) -> None:
    bucket, key, _ = fs.split_path(path)
    condition = {"IfNoneMatch": "*"} if token is None else {"IfMatch": token}
    try:
        fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, **condition)
    except OSError as exc:
        if _s3_conflict(exc):
            raise Conflict(f"{path} changed since it was read") from None
        raise
    fs.invalidate_cache(path)


def _swap_local(path: str, data: bytes, token: str | None) -> None:
    with _staged(path, data) as tmp, _folder_lock(path):
        if token is None:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise Conflict(f"{path} exists already") from None
        else:
            try:
                with open(path, "rb") as f:
                    current = _digest(f.read())
            except FileNotFoundError:
                current = None
            if current != token:
                raise Conflict(f"{path} changed since it was read")
            os.replace(tmp, path)
        _fsync_dir(os.path.dirname(path))


def swap(fs, path: str, data: bytes, token: str | None) -> None:
    """Write ``data`` under ``path`` only if it is still absent (``token=None``) or still the version that
    ``read_versioned`` gave ``token`` for; otherwise raise ``Conflict`` and change nothing."""
    if is_local(fs):
        _swap_local(path, data, token)
    elif _is_s3(fs):
        _swap_s3(fs, path, data, token)
    elif token is None:
        try:
            fs.pipe_file(path, data, mode="create")
        except FileExistsError:
            raise Conflict(f"{path} exists already") from None
    else:
        current = read_versioned(fs, path)
        if current is None or current.token != token:
            raise Conflict(f"{path} changed since it was read")
        fs.pipe_file(path, data)
