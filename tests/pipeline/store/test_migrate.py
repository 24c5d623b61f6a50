"""``reelscope migrate``: an output written in the manifest layout of schema version 2 (as ``pipeline/tables.py``
of c0f4a34 wrote it: one Parquet file per table per shard write, a ``_manifests/[<partition>/]shard-<id>.json``
naming the committed ones) becomes Delta tables, with nothing committed lost and nothing uncommitted gained."""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import posixpath
from types import SimpleNamespace

import duckdb
import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

import pipeline.store.migrate as migrate_mod
from pipeline.store import Output, OutputError, commit_shard, delta_storage_options, open_snapshot, read_commits
from pipeline.store.migrate import migrate
from schemas import TABLES, schema_for
from schemas.commit import CommitRecord

DIM = 4
A, B, C, D = "aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb", "cccccccccccccccc", "dddddddddddddddd"


# -- the old layout, written as the old writer did ---------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Video:
    id: str
    keyframes: int = 1
    segments: int = 1
    tag: str = ""  # tells copies of one video apart (in codec, captions, titles)
    ok: bool = True


def old_schema(table: str) -> pa.Schema:
    """Schema version 2: only ``videos`` had ``shard_id``; the embedding a fixed-size list."""
    schema = schema_for(table, DIM)
    if table != "videos":
        schema = schema.remove(schema.get_field_index("shard_id"))
    return schema.with_metadata({"reelscope.table": table, "reelscope.schema_version": "2"})


def old_rows(shard_id: str, videos: list[Video], at: dt.datetime) -> dict[str, pa.Table]:
    prov = {"pipeline_version": "0.9.0", "config_fingerprint": "cfg-old", "processed_at": at}
    rows = {t: [] for t in TABLES}
    for v in videos:
        rows["videos"].append({
            "video_id": v.id, "uri": f"file:///in/{v.id}.mp4", "status": "ok" if v.ok else "failed",
            "error": None if v.ok else "decode: not a video", "input_fingerprint": f"fp-{v.id}", "size_bytes": 100,
            "duration_s": 4.0 if v.ok else None, "width": 32, "height": 24, "fps": 25.0, "num_frames": 100,
            "codec": v.tag or "h264", "rotation": 0, "has_audio": True, "language": "en",
            "num_keyframes": v.keyframes if v.ok else None, "num_segments": v.segments if v.ok else None,
            "shard_id": shard_id, **prov,
        })
        if not v.ok:
            continue
        for i in range(v.keyframes):
            rows["keyframes"].append({
                "video_id": v.id, "frame_index": 25 * i, "timestamp_s": float(i), "width": 32, "height": 24,
                "scene_score": 0.5, "image": b"\xff\xd8jpeg", "caption": f"{v.id} {v.tag} {i}",
                "embedding": list(np.full(DIM, 0.5, np.float32)), "caption_model": "cap", "embedding_model": "emb",
                **prov,
            })
        for i in range(v.segments):
            rows["segments"].append({
                "video_id": v.id, "segment_index": i, "start_s": float(i), "end_s": i + 0.5, "text": f"{v.tag} said",
                "language": "en", "asr_model": "whisper", **prov,
            })
        rows["summaries"].append({
            "video_id": v.id, "title": f"{v.id} {v.tag}", "summary": "s",
            "timeline": [{"timestamp_s": 1.0, "text": "x"}],
            "status": "ok", "raw": None, "chunks": 1, "summary_model": "llm", **prov,
        })
    return {t: pa.Table.from_pylist(r, schema=old_schema(t)) for t, r in rows.items()}


def _parquet(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def write_old_shard(
    uri: str, opts, shard_id: str, videos: list[Video], *, committed_at: str | None, partition: str | None = None,
    generation: str = "0123456789ab", manifest: bool = True, truncate: bool = False,
) -> None:
    """One shard write of the old ``Output.write_shard``: its four files, then (``manifest``) its manifest."""
    fs, root = fsspec.core.url_to_fs(uri, **(opts or {}))
    at = dt.datetime.fromisoformat(committed_at or "2026-11-01T00:00:00+00:00")
    tables = old_rows(shard_id, videos, at)
    files = {}
    for name in TABLES:
        rel = posixpath.join(name, *([partition] if partition else []), f"shard-{shard_id}-{generation}.parquet")
        fs.makedirs(posixpath.dirname(posixpath.join(root, rel)), exist_ok=True)
        fs.pipe_file(posixpath.join(root, rel), _parquet(tables[name]))
        files[name] = {"path": rel, "rows": tables[name].num_rows}
    if not manifest:
        return
    body = {
        "config_fingerprint": "cfg-old",
        "videos": [{"video_id": v.id, "input_fingerprint": f"fp-{v.id}", "uri": f"file:///in/{v.id}.mp4",
                    "status": "ok" if v.ok else "failed"} for v in videos],
        "shard_id": shard_id, "schema_version": "2", "partition": partition, "files": files,
        "pipeline_version": "0.9.0", "profile": "tiny",
        # An older manifest's role names ("embedder") read as today's.
        "models": {"asr": "whisper", "caption": "cap", "embedder": "emb", "summary": "llm"},
        "model_refs": {"embedder": {"ref": "hf:org/emb", "name": "emb", "revision": "r1", "endpoint": None}},
        "embedding_dim": DIM, "committed_at": committed_at,
        "stages": {"decode": {"in": len(videos), "ok": sum(v.ok for v in videos), "failed": {}, "seconds": 1.5}},
    }
    text = json.dumps(body, indent=1, sort_keys=True).encode()
    path = posixpath.join(root, "_manifests", *([partition] if partition else []), f"shard-{shard_id}.json")
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    fs.pipe_file(path, text[: len(text) // 2] if truncate else text)


def build_old_output(uri: str, opts=None, partition: str | None = None) -> None:
    """Two shards holding v3 (B the newer), a generation of A that died, a temporary, an orphan shard (C) and
    a shard whose manifest is truncated (D)."""
    write_old_shard(uri, opts, A, [Video("v1", 2, 1, "a"), Video("v2", 1, 2, "a"), Video("v3", 1, 1, "old")],
                    committed_at="2026-11-20T10:00:00+00:00", partition=partition)
    write_old_shard(uri, opts, B, [Video("v3", 3, 2, "new"), Video("v4", ok=False)],
                    committed_at="2026-11-21T10:00:00+00:00", partition=partition)
    write_old_shard(uri, opts, A, [Video("v1", 5, 5, "stale")], committed_at=None, partition=partition,
                    generation="deadbeef0000", manifest=False)
    write_old_shard(uri, opts, C, [Video("v9", 1, 1, "orphan")], committed_at=None, partition=partition, manifest=False)
    write_old_shard(uri, opts, D, [Video("v5", 1, 1, "lost")], committed_at="2026-11-21T11:00:00+00:00",
                    partition=partition, truncate=True)
    fs, root = fsspec.core.url_to_fs(uri, **(opts or {}))
    sub = [partition] if partition else []
    fs.pipe_file(posixpath.join(root, "keyframes", *sub, f"shard-{A}-0123456789ab.parquet.tmp-0badc0ffee00"), b"PAR1")


EXPECTED = {  # video -> (codec, shard, keyframes, segments, summaries)
    "v1": ("a", A, 2, 1, 1), "v2": ("a", A, 1, 2, 1), "v3": ("new", B, 3, 2, 1), "v4": ("h264", B, 0, 0, 0),
}


# -- reading it back ---------------------------------------------------------------------------------


def delta(uri: str, table: str, opts=None) -> pa.Table:
    """A table as any Delta reader sees it (no reelscope code)."""
    options = delta_storage_options(opts, uri)
    return DeltaTable(posixpath.join(uri, table), storage_options=options).to_pyarrow_dataset().to_table()


def per_video(table: pa.Table) -> dict[str, int]:
    counts = table.group_by("video_id").aggregate([("video_id", "count")]).to_pylist()
    return {r["video_id"]: r["video_id_count"] for r in counts}


def assert_converted(uri: str, opts=None, partition: str | None = None) -> None:
    where = [("dt", partition.split("=", 1)[1])] if partition else []
    tables = {t: delta(uri, t, opts) for t in TABLES}
    for t, rows in tables.items():
        for column, value in where:
            rows = rows.filter(pc.equal(rows[column], value))
        tables[t] = rows
    videos = {r["video_id"]: r for r in tables["videos"].to_pylist()}
    assert sorted(videos) == sorted(EXPECTED) and tables["videos"].num_rows == len(EXPECTED)
    for vid, (codec, shard, kf, seg, summ) in EXPECTED.items():
        assert (videos[vid]["codec"], videos[vid]["shard_id"]) == (codec, shard)
        for name, n in (("keyframes", kf), ("segments", seg), ("summaries", summ)):
            assert per_video(tables[name]).get(vid, 0) == n, (name, vid)
    for name in ("keyframes", "segments", "summaries"):
        rows = tables[name].to_pylist()
        assert {r["shard_id"] for r in rows} == {A, B}
        assert all(r["shard_id"] == EXPECTED[r["video_id"]][1] for r in rows)
    # The newer shard's children of v3, none of the older one's, the stale generation's or the orphan's.
    assert sorted(r["caption"] for r in tables["keyframes"].to_pylist() if r["video_id"] == "v3") == [
        "v3 new 0", "v3 new 1", "v3 new 2"]
    assert "old" not in {r["text"].split()[0] for r in tables["segments"].to_pylist()}
    assert not {"v5", "v9"} & set(per_video(tables["keyframes"]))
    assert tables["keyframes"].schema.field("embedding").type.value_type == pa.float32()


def old_files(uri: str, opts=None) -> list[str]:
    fs, root = fsspec.core.url_to_fs(uri, **(opts or {}))
    fs.invalidate_cache()
    return sorted(p for p in fs.find(root) if "/_manifests/" in p or posixpath.basename(p).startswith("shard-"))


def table_rows(uri: str) -> dict[str, list[dict]]:
    """Every table's rows in a stable order, for comparing two outputs."""
    key = lambda r: json.dumps(r, default=str, sort_keys=True)  # noqa: E731
    return {t: sorted(delta(uri, t).to_pylist(), key=key) for t in TABLES}


E = "eeeeeeeeeeeeeeee"


def later_run_commits_v3(uri: str) -> None:
    """A run of this version commits v3 (1 keyframe, 4 segments) in a shard of its own, E."""
    rows = old_rows(E, [Video("v3", 1, 4, "later")], dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc))
    tables = {t: migrate_mod._to_schema(t, rows[t], SimpleNamespace(shard_id=E), DIM) for t in TABLES}
    commit_shard(Output(uri), tables, CommitRecord(run="run-later", shard_id=E, embedding_dim=DIM), planned_version=-1)


# -- tests -------------------------------------------------------------------------------------------


def test_old_output_is_refused_then_migrated_once(tmp_path):
    uri = str(tmp_path / "out")
    build_old_output(uri)
    with pytest.raises(OutputError, match="reelscope migrate") as refused:
        open_snapshot(uri)
    assert "\n" not in str(refused.value)

    lines = migrate(uri)

    assert lines[-1] == f"migrated 2 shard(s), 4 videos (1 duplicate rows dropped) into Delta tables at {uri}"
    assert any(line.startswith("skipped unreadable manifest _manifests/shard-dddddddddddddddd.json") for line in lines)
    assert f"shard {A}: 2 video(s), 3 keyframe(s), 3 segment(s), 2 summaries; 1 video(s) left to newer shards" in lines
    assert f"shard {B}: 2 video(s), 3 keyframe(s), 2 segment(s), 1 summaries" in lines
    assert_converted(uri)
    assert old_files(uri) == []  # manifests, named and orphan files, the temporary: all gone
    assert (tmp_path / "out" / "videos" / "_delta_log").is_dir()

    # DuckDB over the Delta reader's dataset: one row per video.
    videos = DeltaTable(f"{uri}/videos").to_pyarrow_dataset()
    keyframes = DeltaTable(f"{uri}/keyframes").to_pyarrow_dataset()
    con = duckdb.connect()
    con.register("videos", videos)
    con.register("keyframes", keyframes)
    assert con.execute("select count(*), count(distinct video_id) from videos").fetchone() == (4, 4)
    assert con.execute("select codec, shard_id from videos where video_id = 'v3'").fetchall() == [("new", B)]
    assert con.execute("select count(*) from keyframes k join videos v using (video_id, shard_id)").fetchone() == (6,)

    # The store's own readers: commit records keep each old shard's provenance; embeddings come back fixed-size.
    snapshot = open_snapshot(uri)
    records = {c.shard_id: c for c in snapshot.commits}
    assert set(records) == {A, B, "verified"}
    for shard in (A, B):
        c = records[shard]
        assert (c.kind, c.run, c.profile, c.embedding_dim) == ("migrate", "migrate", "tiny", DIM)
        assert c.config_fingerprint == "cfg-old" and c.pipeline_version == "0.9.0"
        assert c.model_refs["embedding"].ref == "hf:org/emb" and c.models["embedding"] == "emb"
        assert c.stages["decode"].seconds == 1.5 and c.schema_version == "3"
    assert records[A].committed_at.startswith("2026-11-20") and records[A].rows["videos"] == 2
    assert records["verified"].rows == {"videos": 4, "keyframes": 6, "segments": 5, "summaries": 3}
    kf = snapshot.read("keyframes")
    assert pa.types.is_fixed_size_list(kf.schema.field("embedding").type) and kf.num_rows == 6

    assert migrate(uri) == [f"nothing to migrate: {uri} is already in Delta tables"]


def test_partitioned_output_keeps_its_partitions(tmp_path):
    uri = str(tmp_path / "out")
    build_old_output(uri, partition="dt=2026-11-22")
    # The next day: the same shard id (a digest of the same videos) and v1 again, in its own partition.
    write_old_shard(uri, None, A, [Video("v1", 1, 1, "day2")], committed_at="2026-11-23T10:00:00+00:00",
                    partition="dt=2026-11-23")
    with pytest.raises(OutputError, match="reelscope migrate"):
        Output(uri, None, "dt=2026-11-22").check_writable()

    lines = migrate(uri)

    assert lines[-1] == f"migrated 3 shard(s), 5 videos (1 duplicate rows dropped) into Delta tables at {uri}"
    assert f"shard {A} (dt=2026-11-23): 1 video(s), 1 keyframe(s), 1 segment(s), 1 summaries" in lines
    for table in TABLES:
        assert DeltaTable(f"{uri}/{table}").metadata().partition_columns == ["dt"]
    assert_converted(uri, partition="dt=2026-11-22")
    day2 = [r for r in delta(uri, "keyframes").to_pylist() if r["dt"] == "2026-11-23"]
    assert [(r["video_id"], r["caption"], r["shard_id"]) for r in day2] == [("v1", "v1 day2 0", A)]
    assert old_files(uri) == []
    assert {c.run for c in read_commits(Output(uri))} == {"migrate:dt=2026-11-22", "migrate:dt=2026-11-23"}


def test_interrupted_migration_resumes_to_the_same_tables(tmp_path, monkeypatch):
    whole, halted = str(tmp_path / "whole"), str(tmp_path / "halted")
    build_old_output(whole)
    build_old_output(halted)
    migrate(whole)

    real, calls = migrate_mod._commit, []

    def dies_on_the_second_shard(output, tables, record):
        calls.append(record.shard_id)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return real(output, tables, record)

    monkeypatch.setattr(migrate_mod, "_commit", dies_on_the_second_shard)
    with pytest.raises(KeyboardInterrupt):
        migrate(halted)
    assert calls == [A, B]
    assert (tmp_path / "halted" / "_manifests").is_dir()  # nothing removed
    assert [r["video_id"] for r in delta(halted, "videos").to_pylist()] == ["v1", "v2"]

    # As if it had also died between A's videos commit and A's commit record.
    DeltaTable(f"{halted}/_commits").delete(f"shard_id = '{A}'")
    assert read_commits(Output(halted)) == []

    monkeypatch.setattr(migrate_mod, "_commit", real)
    lines = migrate(halted)

    # A shard without its commit record is not taken as done: it is committed again (replacing its rows).
    assert not any(line.startswith(f"shard {A}: already migrated") for line in lines)
    assert any(line.startswith(f"shard {A}: ") for line in lines)
    assert lines[-1] == f"migrated 2 shard(s), 4 videos (1 duplicate rows dropped) into Delta tables at {halted}"
    assert_converted(halted)
    assert table_rows(halted) == table_rows(whole)
    assert old_files(halted) == []
    assert sorted(c.shard_id for c in read_commits(Output(halted))) == [A, B, "verified"]


def _migrate_killed_after_a(uri: str, monkeypatch) -> None:
    """A migration that dies after committing old shard A, before B."""
    real = migrate_mod._commit

    def only_a(output, tables, record):
        if record.shard_id != A:
            raise KeyboardInterrupt("killed")
        return real(output, tables, record)

    monkeypatch.setattr(migrate_mod, "_commit", only_a)
    with pytest.raises(KeyboardInterrupt):
        migrate(uri)
    monkeypatch.undo()


def test_a_run_between_two_attempts_keeps_its_newer_rows(tmp_path, monkeypatch):
    """An output half migrated is open to runs (its videos table exists): a video a run committed there since is
    newer than any old shard's copy, which is left out; nothing is held twice and the migration completes."""
    uri = str(tmp_path / "out")
    build_old_output(uri)
    _migrate_killed_after_a(uri, monkeypatch)
    later_run_commits_v3(uri)

    lines = migrate(uri)

    assert f"shard {B}: 1 video(s), 0 keyframe(s), 0 segment(s), 0 summaries; 1 video(s) left to later runs" in lines
    assert "1 video(s) committed by later runs are kept as they are" in lines
    assert lines[-1] == f"migrated 2 shard(s), 3 videos (1 duplicate rows dropped) into Delta tables at {uri}"
    videos = {r["video_id"]: (r["codec"], r["shard_id"]) for r in delta(uri, "videos").to_pylist()}
    assert videos == {"v1": ("a", A), "v2": ("a", A), "v3": ("later", E), "v4": ("h264", B)}
    assert per_video(delta(uri, "segments")) == {"v1": 1, "v2": 2, "v3": 4}
    assert old_files(uri) == []


def test_a_run_committing_during_the_migration_keeps_its_rows(tmp_path, monkeypatch):
    uri = str(tmp_path / "out")
    build_old_output(uri)
    real = migrate_mod.table_version

    def version_then_a_run_commits(output, table):
        version = real(output, table)
        if version > 0 and not fired:  # B's commit, planned now: a run commits v3 meanwhile
            fired.append(True)
            later_run_commits_v3(uri)
        return version

    fired: list = []
    monkeypatch.setattr(migrate_mod, "table_version", version_then_a_run_commits)

    lines = migrate(uri)

    assert fired
    assert (f"shard {B}: 1 video(s), 0 keyframe(s), 0 segment(s), 0 summaries; 1 video(s) left to a run committing "
            "meanwhile") in lines
    videos = {r["video_id"]: (r["codec"], r["shard_id"]) for r in delta(uri, "videos").to_pylist()}
    assert videos == {"v1": ("a", A), "v2": ("a", A), "v3": ("later", E), "v4": ("h264", B)}
    assert per_video(delta(uri, "keyframes")) == {"v1": 2, "v2": 1, "v3": 1}
    assert old_files(uri) == []


def test_migration_killed_while_removing_the_old_layout_finishes(tmp_path, monkeypatch):
    uri = str(tmp_path / "out")
    build_old_output(uri)

    def killed(root):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(migrate_mod, "_remove_layout", killed)
    with pytest.raises(KeyboardInterrupt):
        migrate(uri)
    monkeypatch.undo()
    versions = DeltaTable(f"{uri}/videos").version()

    lines = migrate(uri)

    assert not any(line.startswith("shard ") for line in lines)  # verified already: nothing converted again
    assert lines[-1].startswith("migrated 2 shard(s), 4 videos")
    assert DeltaTable(f"{uri}/videos").version() == versions
    assert_converted(uri)
    assert old_files(uri) == []


def test_tables_that_do_not_verify_keep_the_old_layout(tmp_path, monkeypatch):
    uri = str(tmp_path / "out")
    build_old_output(uri)
    _migrate_killed_after_a(uri, monkeypatch)
    DeltaTable(f"{uri}/keyframes").delete("video_id = 'v1' AND frame_index = 0")  # a row lost meanwhile
    before = old_files(uri)

    with pytest.raises(OutputError, match=f"did not verify.*the keyframes table of the output holds 1 row.s. of video "
                                          f"v1 in shard {A}, the old shards kept 2"):
        migrate(uri)

    assert old_files(uri) == before


def test_a_shard_whose_files_are_damaged_is_skipped(tmp_path):
    """A readable manifest naming a file that is gone: the shard is reported and left out whole (the next run
    processes its videos again); a video it held too stays with the older shard holding it."""
    uri = str(tmp_path / "out")
    build_old_output(uri)
    F = "ffffffffffffffff"
    write_old_shard(uri, None, F, [Video("v2", 1, 1, "broken"), Video("v6")], committed_at="2026-11-22T10:00:00+00:00")
    (tmp_path / "out" / "keyframes" / f"shard-{F}-0123456789ab.parquet").unlink()

    lines = migrate(uri)

    assert (f"skipped shard {F}: its file keyframes/shard-{F}-0123456789ab.parquet is missing; the next run processes "
            "its videos again") in lines
    assert_converted(uri)  # v2 from A, no v6
    assert old_files(uri) == []


def test_mixed_partitioning_is_refused_before_writing(tmp_path):
    uri = str(tmp_path / "out")
    build_old_output(uri)
    write_old_shard(uri, None, C, [Video("v7")], committed_at="2026-11-22T10:00:00+00:00", partition="dt=2026-11-22")
    before = old_files(uri)
    with pytest.raises(OutputError, match="one partitioning"):
        migrate(uri)
    assert old_files(uri) == before and not (tmp_path / "out" / "videos" / "_delta_log").exists()


def test_nothing_to_migrate(tmp_path):
    with pytest.raises(OutputError, match=r"^output .*nowhere does not exist$"):
        migrate(str(tmp_path / "nowhere"))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert migrate(str(empty)) == [f"nothing to migrate: {empty} holds no tables in the manifest layout"]


def test_cli_migrate(tmp_path, cli_run):
    uri = str(tmp_path / "out")
    build_old_output(uri)
    code, out, err = cli_run("migrate", "--output", uri)
    assert code == 0, err
    assert f"migrated 2 shard(s), 4 videos (1 duplicate rows dropped) into Delta tables at {uri}" in out
    assert_converted(uri)


def test_migrate_on_s3(s3):
    bucket, opts = s3
    uri = f"s3://{bucket}/out"
    build_old_output(uri, opts)
    with pytest.raises(OutputError, match="reelscope migrate"):
        open_snapshot(uri, opts)

    lines = migrate(uri, opts)

    assert lines[-1] == f"migrated 2 shard(s), 4 videos (1 duplicate rows dropped) into Delta tables at {uri}"
    assert_converted(uri, opts)
    assert old_files(uri, opts) == []
    assert open_snapshot(uri, opts).read("videos").num_rows == 4
    assert migrate(uri, opts) == [f"nothing to migrate: {uri} is already in Delta tables"]
