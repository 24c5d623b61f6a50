"""Shard commits (``pipeline.store.commit``): the rows as declared, idempotent retries and redos, videos two
runs planned into different shards, partitions and partition replacement."""
from __future__ import annotations

import datetime as dt
import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

import pipeline.store.commit as commit_mod
from pipeline.store import (
    COMMITS_TABLE, Output, OutputError, commit_shard, committed_videos, open_snapshot, publish_partition, read_commits,
    shard_committed,
)
from schemas import SCHEMA_VERSION, SEGMENTS, SUMMARIES, TABLES, VIDEOS, keyframes_schema, schema_for
from schemas.commit import CommitRecord
from tests.pipeline.store import shards as S

SHARD = "0123456789abcdef"


def _rows(output: Output, table: str, **filters) -> list[dict]:
    rows = output.dataset(table).to_table().to_pylist()
    return [r for r in rows if all(r[k] == v for k, v in filters.items())]


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "pipeline.store.commit" and r.levelno == logging.WARNING]


def test_rows_follow_the_schemas():
    t = S.shard_tables(SHARD, ["v1", "v2"], failed=["v2"])
    assert t["videos"].schema.equals(VIDEOS) and t["segments"].schema.equals(SEGMENTS)
    assert t["summaries"].schema.equals(SUMMARIES) and t["keyframes"].schema.equals(keyframes_schema(S.DIM))
    assert all(t[name].column("shard_id").to_pylist() == [SHARD] * t[name].num_rows for name in TABLES)
    assert t["videos"].column("status").to_pylist() == ["ok", "failed"]
    assert t["videos"].column("error").to_pylist() == [None, "decode: empty file (0 bytes)"]
    assert t["keyframes"].num_rows == 2 and t["summaries"].num_rows == 1
    emb = t["keyframes"].column("embedding")
    assert pa.types.is_fixed_size_list(emb.type) and emb.type.list_size == S.DIM
    assert np.allclose(np.linalg.norm(np.array(emb.to_pylist()), axis=1), 1.0)


def test_round_trip(make_output, where):
    out = make_output()
    tables = S.shard_tables(SHARD, ["v1", "v2"], failed=["v2"], keyframes=3, segments=2)
    done = commit_shard(out, tables, S.record("run-1", SHARD), planned_version=-1)
    assert done.rows == {"videos": 2, "keyframes": 3, "segments": 2, "summaries": 1}
    assert done.schema_version == SCHEMA_VERSION and done.partition is None and done.embedding_dim == S.DIM
    assert done.versions == {name: out.table(name).version() for name in TABLES}
    assert [r.shard_id for r in read_commits(out)] == [SHARD] and read_commits(out)[0] == done

    snapshot = open_snapshot(out.uri, out.storage_options)
    assert snapshot.versions == done.versions and snapshot.embedding_dim == S.DIM
    for name in TABLES:
        read = snapshot.read(name)
        # The schemas as declared, the embedding's fixed width included (Delta keeps a plain list; the
        # snapshot casts it back), and the rows as written.
        assert read.schema.equals(schema_for(name, S.DIM)), name
        assert read.sort_by([("video_id", "ascending")]).equals(tables[name].sort_by([("video_id", "ascending")])), name
        for uri in out.table(name).file_uris():  # Parquet, zstd
            with out.fs.open(uri if where == "local" else out.fs._strip_protocol(uri), "rb") as f:
                assert pq.ParquetFile(f).metadata.row_group(0).column(0).compression == "ZSTD"
    if where == "s3":  # one conditional PUT per commit (no lock service)
        assert out.delta_options["conditional_put"] == "etag"
        assert out.delta_options["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1:")


def test_files_the_log_does_not_name_are_invisible(tmp_path):
    out = Output(str(tmp_path / "out"))
    S.commit(out, SHARD, ["v1"])
    stray = tmp_path / "out" / "videos" / "part-00000-left-by-a-killed-writer.zstd.parquet"
    pq.write_table(S.shard_tables("ffffffffffffffff", ["v9"])["videos"], stray)
    assert S.video_ids(out) == ["v1"]
    assert open_snapshot(out.uri).read("videos").column("video_id").to_pylist() == ["v1"]


def test_a_write_that_fails_midway_commits_nothing(tmp_path):
    out = Output(str(tmp_path / "out"))
    S.commit(out, SHARD, ["v1", "v2"])
    before = {name: out.table(name).version() for name in TABLES}
    batches = S.shard_tables(SHARD, ["v1", "v2"], tag="-new")["keyframes"].to_batches(max_chunksize=1)

    def failing():
        yield batches[0]
        raise OSError(28, "No space left on device")  # a full disk after the first batch

    reader = lambda: pa.RecordBatchReader.from_batches(batches[0].schema, failing())  # noqa: E731
    with pytest.raises(Exception, match="No space left on device"):
        commit_mod.write_rows(out, "keyframes", reader, f"shard_id = '{SHARD}'", "reelscope:run-2:" + SHARD)
    assert {name: out.table(name).version() for name in TABLES} == before
    assert [r["caption"] for r in _rows(out, "keyframes")].count("frame 0-new") == 0
    S.check_invariants(out, ["v1", "v2"], keyframes=2, segments=1)


def test_a_redo_of_some_videos_of_a_shard_keeps_the_others(tmp_path):
    out = Output(str(tmp_path / "out"))
    first = dt.datetime(2026, 11, 20, tzinfo=dt.timezone.utc)
    S.commit(out, SHARD, ["v1", "v2", "v3"], failed=["v3"], processed_at=first)
    S.commit(out, SHARD, ["v3"], tag="-redo", run="run-2")  # v3 decodes this time
    videos = {r["video_id"]: r for r in _rows(out, "videos")}
    assert sorted(videos) == ["v1", "v2", "v3"] and videos["v3"]["status"] == "ok"
    assert videos["v1"]["processed_at"] == videos["v2"]["processed_at"] == first
    assert videos["v3"]["processed_at"] > first
    captions = sorted((r["video_id"], r["caption"]) for r in _rows(out, "keyframes"))
    assert captions == [("v1", "frame 0"), ("v1", "frame 1"), ("v2", "frame 0"), ("v2", "frame 1"),
                        ("v3", "frame 0-redo"), ("v3", "frame 1-redo")]
    S.check_invariants(out, ["v1", "v2", "v3"], keyframes=2, segments=1)


def test_a_changed_video_has_its_rows_replaced_never_doubled(tmp_path):
    out = Output(str(tmp_path / "out"))
    S.commit(out, SHARD, ["v1", "v2"], keyframes=5, segments=3)
    changed = S.task("v1", keyframes=2, segments=1, fingerprint="fp-v1-changed", tag="-changed")
    commit_shard(out, S.tables([changed], SHARD), S.record("run-2", SHARD), planned_version=-1)
    videos = {r["video_id"]: r for r in _rows(out, "videos")}
    assert len(_rows(out, "videos")) == 2 and videos["v1"]["input_fingerprint"] == "fp-v1-changed"
    assert sorted(r["caption"] for r in _rows(out, "keyframes", video_id="v1")) == [
        "frame 0-changed", "frame 1-changed"]
    assert [r["text"] for r in _rows(out, "segments", video_id="v1")] == ["said 0-changed"]
    assert len(_rows(out, "keyframes", video_id="v2")) == 5 and len(_rows(out, "segments", video_id="v2")) == 3
    assert [r["title"] for r in _rows(out, "summaries", video_id="v1")] == ["T v1-changed"]


def test_a_retried_commit_of_the_same_record_is_one_set_of_rows(make_output):
    out = make_output()
    tables, record = S.shard_tables(SHARD, ["v1", "v2"]), S.record("run-1", SHARD)
    assert not shard_committed(out, "run-1", SHARD)
    commit_shard(out, tables, record, planned_version=-1)
    commit_shard(out, tables, record, planned_version=-1)  # the task ran again
    assert shard_committed(out, "run-1", SHARD)
    assert not shard_committed(out, "run-2", SHARD) and not shard_committed(out, "run-1", "fedcba9876543210")
    assert S.counts(out) == {"videos": 2, "keyframes": 4, "segments": 2, "summaries": 2}
    S.check_invariants(out, ["v1", "v2"], keyframes=2, segments=1)


def test_retry_failed_redoes_only_the_failed_videos_of_their_shard(tmp_path):
    out = Output(str(tmp_path / "out"))
    version, [shard] = S.plan(out, ["a", "b", "letter"], shard_size=3)
    S.commit(out, shard.shard_id, ["a", "b", "letter"], failed=["letter"], planned_version=version)
    before = {r["video_id"]: r["processed_at"] for r in _rows(out, "videos")}
    assert S.plan(out, ["a", "b", "letter"], shard_size=3)[1] == []  # all done
    version, redo = S.plan(out, ["a", "b", "letter"], shard_size=3, retry_failed=True)
    assert [(s.shard_id, [i.video_id for i in s.items]) for s in redo] == [(shard.shard_id, ["letter"])]
    S.commit(out, shard.shard_id, ["letter"], failed=["letter"], planned_version=version, run="run-2")
    after = {r["video_id"]: r["processed_at"] for r in _rows(out, "videos")}
    assert after.keys() == before.keys()
    assert [v for v in after if after[v] != before[v]] == ["letter"]
    assert len(read_commits(out)) == 2


def test_two_shards_planned_from_one_snapshot_commit_a_common_video_once(make_output, caplog):
    out = make_output()
    version, [first] = S.plan(out, ["a", "b"], shard_size=2)  # one run lists a, b
    _, [second] = S.plan(out, ["b", "c", "d"], shard_size=3)  # another, at the same time, lists b, c, d
    assert first.shard_id != second.shard_id
    S.commit(out, first.shard_id, ["a", "b"], planned_version=version, run="run-1")
    with caplog.at_level(logging.WARNING, logger="pipeline.store.commit"):
        done = S.commit(out, second.shard_id, ["b", "c", "d"], planned_version=version, run="run-2")
    [warning] = _warnings(caplog)
    assert f"video b of shard {second.shard_id} was committed in shard {first.shard_id}" in warning
    assert done.rows == {"videos": 2, "keyframes": 4, "segments": 2, "summaries": 2}
    assert S.shard_of(out) == {"a": first.shard_id, "b": first.shard_id, "c": second.shard_id, "d": second.shard_id}
    S.check_invariants(out, "abcd", keyframes=2, segments=1)


def test_a_videos_commit_landing_while_the_children_are_written_makes_the_later_shard_look_again(tmp_path, caplog):
    """The other run's ``videos`` commit lands after this shard looked at what others committed (while it writes
    its children): its own ``videos`` commit, made on the version it looked at, conflicts, and it looks again."""
    out = Output(str(tmp_path / "out"))
    version, [first] = S.plan(out, ["a", "b"], shard_size=2)
    _, [second] = S.plan(out, ["b", "c"], shard_size=2)
    real = commit_mod.write_rows
    landed = []

    def interleaved(output, table, *args, **kwargs):
        if table == "summaries" and not landed:  # the last child of the second shard: now the first commits
            landed.append(True)
            S.commit(out, first.shard_id, ["a", "b"], planned_version=version, run="run-1")
        return real(output, table, *args, **kwargs)

    commit_mod.write_rows = interleaved
    try:
        with caplog.at_level(logging.WARNING, logger="pipeline.store.commit"):
            S.commit(out, second.shard_id, ["b", "c"], planned_version=version, run="run-2")
    finally:
        commit_mod.write_rows = real
    assert landed and any(f"video b of shard {second.shard_id}" in m for m in _warnings(caplog))
    assert S.shard_of(out) == {"a": first.shard_id, "b": first.shard_id, "c": second.shard_id}
    S.check_invariants(out, "abc", keyframes=2, segments=1)


def test_a_shard_killed_between_its_children_and_its_videos_commit_shows_nothing_until_retried(tmp_path):
    out = Output(str(tmp_path / "out"))
    S.commit(out, "00000000000000aa", ["x"])
    with S.killed_at("videos"):
        S.commit(out, SHARD, ["v1", "v2"])
    snapshot = open_snapshot(out.uri)
    assert {name: snapshot.read(name).column("video_id").to_pylist() for name in TABLES} == {
        "videos": ["x"], "keyframes": ["x", "x"], "segments": ["x"], "summaries": ["x"]}
    assert S.check_invariants(out, ["x", "v1", "v2"], complete=False, strict=False).stray["keyframes"] == {"v1", "v2"}
    S.commit(out, SHARD, ["v1", "v2"])  # the retry
    S.check_invariants(out, ["x", "v1", "v2"], keyframes=2, segments=1)


def test_a_partitioned_output_and_an_unpartitioned_writer_refuse_each_other(tmp_path):
    daily = Output(str(tmp_path / "daily"), partition="dt=2026-11-22")
    S.commit(daily, SHARD, ["v1"])
    with pytest.raises(OutputError) as refused:
        S.commit(Output(str(tmp_path / "daily")), SHARD, ["v2"])
    assert "\n" not in str(refused.value)
    assert str(refused.value).startswith(f"the videos table of {tmp_path / 'daily'} is partitioned by dt")
    assert str(refused.value).endswith("this run writes no partition")
    plain = Output(str(tmp_path / "plain"))
    S.commit(plain, SHARD, ["v1"])
    with pytest.raises(OutputError) as refused:
        S.commit(Output(str(tmp_path / "plain"), partition="dt=2026-11-22"), SHARD, ["v2"])
    assert "\n" not in str(refused.value)
    assert str(refused.value).endswith("is not partitioned; this run writes partition dt=2026-11-22")
    assert S.video_ids(daily) == ["v1"] and S.video_ids(plain) == ["v1"]


def test_the_daily_partition_column_dt(tmp_path):
    day1 = Output(str(tmp_path / "out"), partition="dt=2026-11-22")
    day2 = Output(str(tmp_path / "out"), partition="dt=2026-11-23")
    S.commit(day1, SHARD, ["v1", "v2"])
    S.commit(day2, SHARD, ["v2", "v3"])  # the same video on another day: a row per day
    for name in TABLES:
        table = day1.table(name)
        assert table.metadata().partition_columns == ["dt"]
        assert all("/dt=2026-11-2" in uri for uri in table.file_uris())
    rows = sorted((r["dt"], r["video_id"]) for r in _rows(day1, "videos"))
    assert rows == [("2026-11-22", "v1"), ("2026-11-22", "v2"), ("2026-11-23", "v2"), ("2026-11-23", "v3")]
    assert sorted(committed_videos(day1)[1]) == ["v1", "v2"] and sorted(committed_videos(day2)[1]) == ["v2", "v3"]
    # A redo within one day leaves the other day alone.
    S.commit(day2, SHARD, ["v2"], tag="-redo", run="run-2")
    assert sorted(r["caption"] for r in _rows(day1, "keyframes", video_id="v2", dt="2026-11-22")) == [
        "frame 0", "frame 1"]
    assert sorted(r["caption"] for r in _rows(day2, "keyframes", video_id="v2", dt="2026-11-23")) == [
        "frame 0-redo", "frame 1-redo"]
    snapshot = open_snapshot(day1.uri, day1.storage_options)
    assert snapshot.read("videos").schema.names[-1] == "dt" and snapshot.read("keyframes").num_rows == 8


def _staged(output: Output, run: str, ids: list[str], **kw) -> Output:
    staging = output.staging(run)
    for n in range(0, len(ids), 2):
        S.commit(staging, f"{n:016x}", ids[n:n + 2], run=run, **kw)
    return staging


def test_publish_partition_replaces_exactly_the_partition(make_output):
    day1, day2 = make_output(partition="dt=2026-11-22"), make_output(partition="dt=2026-11-23")
    S.commit(day1, SHARD, ["o1", "o2", "o3"])
    S.commit(day2, SHARD, ["k1", "k2"])
    day2_files = {name: sorted(u for u in day2.table(name).file_uris() if "/dt=2026-11-23/" in u)
                  for name in TABLES}
    staging = _staged(day1, "run-9", ["n1", "n2", "n3", "n4"], tag="-new")
    assert staging.root.endswith("/_staging/run-9") and S.video_ids(day1) == ["k1", "k2", "o1", "o2", "o3"]
    published = publish_partition(day1, staging, S.record("run-9", "publish"))
    assert published.kind == "publish"
    assert published.rows == {"videos": 4, "keyframes": 8, "segments": 4, "summaries": 4}
    assert sorted(committed_videos(day1)[1]) == ["n1", "n2", "n3", "n4"]
    assert sorted(committed_videos(day2)[1]) == ["k1", "k2"]
    for name in TABLES:  # the other day: the very same files
        assert sorted(u for u in day2.table(name).file_uris() if "/dt=2026-11-23/" in u) == day2_files[name]
    assert not day1.fs.exists(staging.root)
    snapshot = open_snapshot(day1.uri, day1.storage_options)
    assert snapshot.versions == published.versions
    assert sorted(snapshot.read("videos").column("video_id").to_pylist()) == ["k1", "k2", "n1", "n2", "n3", "n4"]
    S.check_invariants(day1, ["k1", "k2", "n1", "n2", "n3", "n4"], keyframes=2, segments=1)


def test_a_publish_killed_after_some_tables_completes_on_rerun(tmp_path):
    day = Output(str(tmp_path / "out"), partition="dt=2026-11-22")
    S.commit(day, SHARD, ["o1", "o2"])
    staging = _staged(day, "run-9", ["n1", "n2", "n3"])
    with S.killed_at("segments"):
        publish_partition(day, staging, S.record("run-9", "publish"))
    # keyframes published, the rest not yet; a snapshot still reads the old partition whole
    assert S.video_ids(day, "keyframes") == ["n1", "n1", "n2", "n2", "n3", "n3"]
    assert S.video_ids(day) == ["o1", "o2"] and S.video_ids(day, "segments") == ["o1", "o2"]
    snapshot = open_snapshot(day.uri)
    assert {name: sorted(set(snapshot.read(name).column("video_id").to_pylist())) for name in TABLES} == {
        name: ["o1", "o2"] for name in TABLES}
    keyframes_version = day.table("keyframes").version()
    published = publish_partition(day, staging, S.record("run-9", "publish"))
    assert day.table("keyframes").version() == keyframes_version  # not published twice
    assert published.versions["keyframes"] == keyframes_version
    assert [c.kind for c in read_commits(day)].count("publish") == 1
    S.check_invariants(day, ["n1", "n2", "n3"], keyframes=2, segments=1)
    assert not day.fs.exists(staging.root)


def test_publish_needs_a_partition(tmp_path):
    out = Output(str(tmp_path / "out"))
    with pytest.raises(ValueError, match="only a partition"):
        publish_partition(out, out.staging("r"), S.record("r", "publish"))


def test_commit_records_of_older_versions_read_with_todays_role_names():
    old = (
        '{"config_fingerprint": "f", "models": {"asr": "w", "embedder": "c"}, "unknown_key": 1, '
        '"model_refs": {"embedder": {"ref": "tiny:clip", "name": "tiny:clip"}}, '
        '"stages": {"transcribe": {"in": 2, "ok": 1, "failed": {"x": 1}, "seconds": 0.5}}}'
    )
    record = CommitRecord.from_json(old)
    assert record.models == {"asr": "w", "embedding": "c"} and record.kind == "shard"
    assert record.model_refs["embedding"].ref == "tiny:clip"
    assert record.stages["asr"].taken == 2 and record.stages["asr"].failed == {"x": 1}
    assert CommitRecord.from_json(record.to_json()) == record


def test_the_commit_record_names_versions_that_hold_every_row_of_its_videos(tmp_path):
    out = Output(str(tmp_path / "out"))
    for n in range(3):
        S.commit(out, f"{n:016x}", [f"v{n}a", f"v{n}b"])
    records = sorted(read_commits(out), key=lambda r: r.versions["videos"])
    assert [r.versions["videos"] for r in records] == [1, 2, 3]
    for r in records:  # at a record's versions, every videos row has its children
        at = {name: DeltaTable(out.table_uri(name), version=r.versions[name]) for name in TABLES}
        ids = set(out.dataset("videos", found=at["videos"]).to_table().column("video_id").to_pylist())
        for name in TABLES[1:]:
            assert set(out.dataset(name, found=at[name]).to_table().column("video_id").to_pylist()) >= ids
    commits = out.dataset(COMMITS_TABLE).to_table()
    assert sorted(commits.column("videos_version").to_pylist()) == [1, 2, 3]
