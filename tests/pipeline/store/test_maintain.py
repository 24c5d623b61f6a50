"""Maintenance (``pipeline.store.maintain``): compaction keeps every row in fewer files, stray children older
than the retention are deleted and younger ones kept, vacuum deletes what no version within the retention
names (files of killed writers included)."""
from __future__ import annotations

import datetime as dt
import os
import time

import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from pipeline.store import COMMITS_TABLE, Output, OutputError, open_snapshot, read_commits
from pipeline.store.maintain import maintain
from schemas import TABLES
from tests.pipeline.store import shards as S

HOURS_AGO = lambda h: dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=h)  # noqa: E731


def _killed_before_videos(out: Output, shard_id: str, ids: list[str], **kw) -> None:
    with S.killed_at("videos"):
        S.commit(out, shard_id, ids, **kw)


def _content(output: Output) -> dict[str, list]:
    """Every row of every table, in a stable order."""
    out = {}
    for name in TABLES:
        rows = output.dataset(name).to_table().to_pylist()
        out[name] = sorted(rows, key=lambda r: (r["video_id"], r.get("frame_index") or r.get("segment_index") or 0))
    return out


def _parquet_files(output: Output, table: str) -> set[str]:
    """The data files in the table's folder, named in the log or not."""
    return {p for p in output.fs.find(output.path(table)) if p.endswith(".parquet") and "/_delta_log/" not in p}


def test_compaction_keeps_every_row_in_fewer_files_and_vacuum_deletes_the_old_ones(tmp_path):
    out = Output(str(tmp_path / "out"))
    for n in range(5):
        S.commit(out, f"{n:016x}", [f"v{n}a", f"v{n}b"])
    S.commit(out, f"{0:016x}", ["v0a"], tag="-redo", run="run-2")
    before, files = _content(out), {name: len(out.table(name).file_uris()) for name in TABLES}
    assert all(n >= 5 for n in files.values()), files
    old_version = out.table("keyframes").version()

    done = {m.table: m for m in maintain(out, retention_hours=0)}
    assert set(done) == {*TABLES, COMMITS_TABLE}
    for name in TABLES:
        assert (done[name].files_before, done[name].files_after) == (files[name], 1), done[name]
        assert done[name].stray_rows == 0 and done[name].vacuumed >= files[name]
        assert _parquet_files(out, name) == {out.fs._strip_protocol(u) for u in out.table(name).file_uris()}
    assert _content(out) == before
    record = read_commits(out)
    assert [r.kind for r in record].count("maintain") == 1
    snapshot = open_snapshot(out.uri, out.storage_options)
    assert snapshot.versions["keyframes"] > old_version  # readers pin the compacted versions from now on
    assert snapshot.read("keyframes").num_rows == 20
    S.check_invariants(out, [f"v{n}{x}" for n in range(5) for x in "ab"], keyframes=2, segments=1)


def test_stray_children_older_than_the_retention_are_deleted_and_younger_ones_kept(tmp_path):
    out = Output(str(tmp_path / "out"))
    S.commit(out, "00000000000000aa", ["a"], processed_at=HOURS_AGO(5))
    _killed_before_videos(out, "00000000000000bb", ["b1", "b2"], processed_at=HOURS_AGO(3))  # died 3 h ago
    _killed_before_videos(out, "00000000000000cc", ["c"])  # a writer on its way to its videos commit, now
    # Died 3 h ago too; d was committed since in another shard (a run that listed other inputs).
    _killed_before_videos(out, "00000000000000dd", ["d", "e"], processed_at=HOURS_AGO(3), tag="-dead")
    S.commit(out, "00000000000000ee", ["d"], run="run-2")
    strays = S.check_invariants(out, ["a", "d"], strict=False).stray
    assert strays["keyframes"] == {"b1", "b2", "c", "d", "e"}  # d: its rows of shard dd (its video is in ee)

    dry = {m.table: m for m in maintain(out, retention_hours=1, dry_run=True)}
    assert [dry[name].stray_rows for name in TABLES[1:]] == [4, 4, 4]  # b1, b2, d and e of their shards
    done = {m.table: m for m in maintain(out, retention_hours=1)}
    assert [done[name].stray_rows for name in TABLES[1:]] == [4, 4, 4]
    assert all(m.vacuumed == 0 for m in done.values())  # every file is younger than the retention
    checked = S.check_invariants(out, ["a", "d"], strict=False)
    assert {name: checked.stray[name] for name in TABLES[1:]} == {name: {"c"} for name in TABLES[1:]}
    assert S.shard_of(out) == {"a": "00000000000000aa", "d": "00000000000000ee"}
    keyframes = out.dataset("keyframes").to_table().to_pylist()
    assert sorted((r["video_id"], r["shard_id"]) for r in keyframes) == [
        ("a", "00000000000000aa")] * 2 + [("c", "00000000000000cc")] * 2 + [("d", "00000000000000ee")] * 2
    assert all(not r["caption"].endswith("-dead") for r in keyframes)
    # Once c's writer is long gone: gone too.
    maintain(out, retention_hours=0)
    S.check_invariants(out, ["a", "d"], keyframes=2, segments=1)


def test_vacuum_with_no_retention_deletes_what_no_current_version_names(tmp_path):
    out = Output(str(tmp_path / "out"))
    S.commit(out, "00000000000000aa", ["a", "b"])
    S.commit(out, "00000000000000aa", ["a"], tag="-redo", run="run-2")
    orphan = tmp_path / "out" / "videos" / "part-00000-of-a-writer-killed-before-its-commit.zstd.parquet"
    pq.write_table(S.shard_tables("00000000000000ff", ["z"])["videos"], orphan)
    young = tmp_path / "out" / "segments" / "part-00000-of-a-writer-on-its-way.zstd.parquet"
    pq.write_table(S.shard_tables("00000000000000ff", ["z"])["segments"], young)
    past = time.time() - 2 * 3600
    os.utime(orphan, (past, past))
    version_1 = DeltaTable(out.table_uri("keyframes"), version=1)

    maintain(out, retention_hours=1)
    assert not orphan.exists() and young.exists()  # older than the retention: deleted; younger: kept
    maintain(out, retention_hours=0.5)
    assert young.exists()  # half an hour is not rounded down to none
    assert out.dataset("keyframes", found=version_1).count_rows() == 4  # a version of minutes ago still reads
    maintain(out, retention_hours=0)
    assert not young.exists()
    with pytest.raises(OSError):  # nothing kept for old versions any more
        out.dataset("keyframes", found=version_1).to_table()
    S.check_invariants(out, ["a", "b"], keyframes=2, segments=1)


def test_a_dry_run_changes_nothing(tmp_path):
    out = Output(str(tmp_path / "out"))
    for n in range(3):
        S.commit(out, f"{n:016x}", [f"v{n}"])
    _killed_before_videos(out, "00000000000000bb", ["b"], processed_at=HOURS_AGO(3))
    versions = {name: out.table(name).version() for name in (*TABLES, COMMITS_TABLE)}
    files = {name: _parquet_files(out, name) for name in TABLES}
    done = {m.table: m for m in maintain(out, retention_hours=0, dry_run=True)}
    assert done["keyframes"].stray_rows == 1 and done["keyframes"].files_before == done["keyframes"].files_after == 4
    assert {name: out.table(name).version() for name in (*TABLES, COMMITS_TABLE)} == versions
    assert {name: _parquet_files(out, name) for name in TABLES} == files


def test_maintain_refuses_an_output_without_tables(tmp_path):
    with pytest.raises(OutputError, match="no reelscope tables under"):
        maintain(Output(str(tmp_path / "nothing")))


def test_a_stray_in_one_day_is_not_hidden_by_the_same_shard_id_on_another_day(tmp_path):
    # A shard id is a digest of its videos: the same videos on two days make the same shard id in both.
    day1, day2 = (Output(str(tmp_path / "out"), partition=f"dt=2026-11-2{d}") for d in (1, 2))
    S.commit(day1, "00000000000000aa", ["a"], processed_at=HOURS_AGO(5))
    _killed_before_videos(day2, "00000000000000aa", ["a"], processed_at=HOURS_AGO(3), tag="-dead")
    root = Output(str(tmp_path / "out"))
    snapshot = open_snapshot(root.uri)
    assert snapshot.key_columns == ["video_id", "shard_id", "dt"]
    # Readers show day 1's rows only: day 2's children have no videos row in their partition.
    keyframes = snapshot.read("keyframes").to_pylist()
    assert {r["dt"] for r in keyframes} == {"2026-11-21"} and len(keyframes) == 2
    from pipeline.query.sql import connect, run_sql

    assert run_sql(connect(snapshot), "SELECT DISTINCT dt FROM segments").to_pylist() == [{"dt": "2026-11-21"}]
    done = {m.table: m for m in maintain(root, retention_hours=1)}
    assert [done[name].stray_rows for name in TABLES[1:]] == [1, 1, 1]
    assert {r["dt"] for r in root.dataset("keyframes").to_table().to_pylist()} == {"2026-11-21"}
