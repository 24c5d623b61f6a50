"""The output store under failures: atomic local commits, unreadable manifests, redo by generations."""
from __future__ import annotations

import errno
import logging
import os

import pytest

from pipeline.atomic import Conflict, read_versioned, swap
from pipeline.tables import Output
from schemas.manifest import ShardManifest
from tests.pipeline.test_tables import _tables

SHARD = "0123456789abcdef"


def _videos(out: Output) -> list[tuple[str, str]]:
    t = out.read_table("videos", columns=["video_id", "shard_id"])
    return sorted(zip(t.column("video_id").to_pylist(), t.column("shard_id").to_pylist()))


def _enospc_on(monkeypatch, marker: bytes) -> None:
    """``os.write`` fails with a full disk for data that holds ``marker`` (the OS call, not the storage class)."""
    real = os.write

    def write(fd, data):
        if marker in bytes(data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data)

    monkeypatch.setattr(os, "write", write)


def test_a_full_disk_during_the_manifest_write_leaves_the_committed_shard(tmp_path, monkeypatch):
    out = Output(str(tmp_path / "out"))
    first = out.write_shard(SHARD, _tables(), ShardManifest(config_fingerprint="cfg", committed_at="1"))
    _enospc_on(monkeypatch, b'"committed_at": "2"')
    with pytest.raises(OSError) as failed:
        out.write_shard(SHARD, _tables(), ShardManifest(config_fingerprint="cfg", committed_at="2"))
    assert failed.value.errno == errno.ENOSPC
    monkeypatch.undo()
    # The old manifest and its files are whole; nothing half-written or temporary is left anywhere.
    assert out.manifests() == [first]
    assert _videos(out) == [("v1", SHARD), ("v2", SHARD)]
    files = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert files == sorted([f"_manifests/shard-{SHARD}.json"] + [f.path for f in first.files.values()])


def test_a_full_disk_during_a_data_write_commits_nothing(tmp_path, monkeypatch):
    out = Output(str(tmp_path / "out"))
    _enospc_on(monkeypatch, b"PAR1")
    with pytest.raises(OSError):
        out.write_shard(SHARD, _tables(), ShardManifest())
    monkeypatch.undo()
    assert out.manifests() == [] and [p for p in (tmp_path / "out").rglob("*") if p.is_file()] == []


def test_an_empty_or_corrupt_manifest_is_skipped_with_one_warning(tmp_path, caplog):
    out = Output(str(tmp_path / "out"))
    good = out.write_shard(SHARD, _tables(), ShardManifest())
    (tmp_path / "out" / "_manifests" / "shard-00000000000000aa.json").write_bytes(b"")
    (tmp_path / "out" / "_manifests" / "shard-00000000000000bb.json").write_bytes(b'{"files": {"vid')
    with caplog.at_level(logging.WARNING, logger="pipeline.tables"):
        assert out.manifests() == [good]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and all("unreadable manifest" in m and "\n" not in m for m in lines)
    assert "shard-00000000000000aa.json" in lines[0] and "empty" in lines[0]
    assert out.read_table("videos").num_rows == 2


def test_a_redo_of_some_videos_keeps_the_others_and_removes_the_old_generation(tmp_path):
    out = Output(str(tmp_path / "out"))
    first = out.write_shard(SHARD, _tables(), ShardManifest(config_fingerprint="cfg"))
    only_v2 = {name: t.filter(t.column("video_id").to_numpy(zero_copy_only=False) == "v2") if "video_id" in
               t.column_names else t for name, t in _tables().items()}
    second = out.write_shard(SHARD, only_v2, ShardManifest(config_fingerprint="cfg"))
    assert _videos(out) == [("v1", SHARD), ("v2", SHARD)]
    assert out.read_table("keyframes").num_rows == 2  # v1's keyframes stayed
    assert {f.path for f in second.files.values()}.isdisjoint(f.path for f in first.files.values())
    for f in first.files.values():
        assert not (tmp_path / "out" / f.path).exists()
    # Another configuration replaces the shard whole.
    out.write_shard(SHARD, only_v2, ShardManifest(config_fingerprint="other"))
    assert _videos(out) == [("v2", SHARD)]


@pytest.mark.parametrize("where", ["local", "s3"])
def test_swap_is_a_compare_and_swap(where, tmp_path, request):
    if where == "s3":
        bucket, opts = request.getfixturevalue("s3")
        out = Output(f"s3://{bucket}/o", opts)
    else:
        out = Output(str(tmp_path))
    path = f"{out.root}/x.json"
    swap(out.fs, path, b"1", None)
    with pytest.raises(Conflict):
        swap(out.fs, path, b"2", None)
    v1 = read_versioned(out.fs, path)
    swap(out.fs, path, b"2", v1.token)
    with pytest.raises(Conflict):  # a writer that read version 1 cannot overwrite version 2
        swap(out.fs, path, b"3", v1.token)
    assert read_versioned(out.fs, path).data == b"2"


def test_s3_rewrite_replaces_the_manifest_in_one_put_and_keeps_rows(s3):
    bucket, opts = s3
    out = Output(f"s3://{bucket}/tables", opts)
    first = out.write_shard(SHARD, _tables(), ShardManifest(config_fingerprint="cfg"))
    second = out.write_shard(SHARD, _tables(), ShardManifest(config_fingerprint="cfg"))
    assert out.manifests() == [second] and _videos(out) == [("v1", SHARD), ("v2", SHARD)]
    for f in first.files.values():
        assert not out.fs.exists(f"{out.root}/{f.path}")
