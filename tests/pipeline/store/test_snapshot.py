"""Snapshots (``pipeline.store.snapshot``): the four tables pinned at the versions of the newest commit record,
children only of videos in the snapshot, in their shard, and the embedding width cast back."""
from __future__ import annotations

import pyarrow as pa
import pytest

from pipeline.query.sql import connect
from pipeline.store import Output, OutputError, Snapshot, ensure_tables, open_snapshot, read_commits
from schemas import TABLES, embedding_type, schema_for
from tests.pipeline.store import shards as S


def _ids(snapshot: Snapshot, table: str) -> list[str]:
    return sorted(snapshot.read(table).column("video_id").to_pylist())


def _killed_before_videos(out: Output, shard_id: str, ids: list[str], **kw) -> None:
    """A shard whose writer died after its children's commits, before its ``videos`` commit."""
    with S.killed_at("videos"):
        S.commit(out, shard_id, ids, **kw)


def test_a_snapshot_reads_the_versions_it_pinned_while_writers_commit(tmp_path):
    out = Output(str(tmp_path / "out"))
    S.commit(out, "00000000000000aa", ["a", "b"])
    old = open_snapshot(out.uri)
    S.commit(out, "00000000000000aa", ["a"], tag="-redo", run="run-2")
    S.commit(out, "00000000000000bb", ["c"], run="run-2")
    new = open_snapshot(out.uri)
    assert old.key != new.key and open_snapshot(out.uri).key == new.key
    assert _ids(old, "videos") == ["a", "b"] and _ids(new, "videos") == ["a", "b", "c"]
    assert sorted(old.read("keyframes", filter=pa.compute.field("video_id") == "a").column("caption").to_pylist()) == [
        "frame 0", "frame 1"]
    assert sorted(new.read("keyframes", filter=pa.compute.field("video_id") == "a").column("caption").to_pylist()) == [
        "frame 0-redo", "frame 1-redo"]
    assert len(old.commits) == 1 and len(new.commits) == 3


def test_children_committed_after_the_newest_record_are_not_read(tmp_path):
    out = Output(str(tmp_path / "out"))
    S.commit(out, "00000000000000aa", ["a"])
    _killed_before_videos(out, "00000000000000bb", ["b"])  # or still on its way to its videos commit
    snapshot = open_snapshot(out.uri)
    assert snapshot.versions == read_commits(out)[0].versions
    assert snapshot.versions["keyframes"] < out.table("keyframes").version()
    assert {name: _ids(snapshot, name) for name in TABLES} == {
        "videos": ["a"], "keyframes": ["a", "a"], "segments": ["a"], "summaries": ["a"]}


def test_children_of_a_killed_shard_are_not_read_when_another_shard_holds_their_video(tmp_path):
    """Shard X died before its videos commit; a later run, listing other inputs, committed a and c in shard Y.
    X's children of a are in the pinned versions, yet a's rows are Y's, once."""
    out = Output(str(tmp_path / "out"))
    _killed_before_videos(out, "000000000000000x", ["a", "b"], tag="-dead")
    S.commit(out, "000000000000000y", ["a", "c"])
    snapshot = open_snapshot(out.uri)
    assert S.video_ids(out, "keyframes").count("a") == 4  # in the table: X's and Y's
    for name, per in (("keyframes", 2), ("segments", 1), ("summaries", 1)):
        rows = snapshot.read(name)
        assert sorted(rows.column("video_id").to_pylist()) == sorted(["a", "c"] * per), name
        assert set(rows.column("shard_id").to_pylist()) == {"000000000000000y"}
        # Also when the columns asked for leave out the shard: the filter reads it all the same.
        assert snapshot.read(name, columns=["video_id"]).column_names == ["video_id"]
        assert snapshot.read(name, columns=["video_id"]).num_rows == 2 * per
    # DuckDB's views over the snapshot (``pipeline.query.sql``) agree.
    with connect(snapshot) as con:
        for name, per in (("keyframes", 2), ("segments", 1), ("summaries", 1)):
            assert con.execute(f"SELECT count(*), count(DISTINCT shard_id) FROM {name}").fetchone() == (2 * per, 1)
        assert con.execute("SELECT count(*) FROM keyframes WHERE caption LIKE '%-dead'").fetchone() == (0,)


def test_the_embedding_width_is_cast_back(tmp_path):
    out = Output(str(tmp_path / "out"))
    S.commit(out, "00000000000000aa", ["a"], dim=8)
    stored = pa.schema(out.dataset("keyframes").schema).field("embedding").type
    assert pa.types.is_list(stored) or pa.types.is_large_list(stored)  # Delta has no fixed-size list
    snapshot = open_snapshot(out.uri)
    assert snapshot.embedding_dim == 8
    assert snapshot.read("keyframes").schema.field("embedding").type == embedding_type(8)
    assert snapshot.read("keyframes").schema.equals(schema_for("keyframes", 8))
    # Without a commit record naming it, the width comes from the column's metadata.
    bare = Snapshot(out, snapshot.versions)
    assert bare.embedding_dim == 8 and bare.read("keyframes").schema.field("embedding").type == embedding_type(8)


def test_two_widths_are_left_as_lists(tmp_path):
    out = Output(str(tmp_path / "out"))
    S.commit(out, "00000000000000aa", ["a"], dim=4)
    S.commit(out, "00000000000000bb", ["b"], dim=8)
    snapshot = open_snapshot(out.uri)
    assert snapshot.embedding_dim is None
    kf = snapshot.read("keyframes")
    assert not pa.types.is_fixed_size_list(kf.schema.field("embedding").type)
    assert sorted(len(v) for v in kf.column("embedding").to_pylist()) == [4, 4, 8, 8]


def test_an_output_without_commit_records_reads_its_current_versions(tmp_path):
    out = Output(str(tmp_path / "out"))
    ensure_tables(out, 4)
    snapshot = open_snapshot(out.uri)
    assert snapshot.commits == () and snapshot.versions == {name: 0 for name in TABLES}
    for name in TABLES:
        assert snapshot.read(name).num_rows == 0
    assert snapshot.read("keyframes").schema.field("embedding").type == embedding_type(4)


def test_what_cannot_be_read_is_one_line(tmp_path):
    cases = {
        tmp_path / "absent": "does not exist",
        tmp_path / "empty": "no reelscope tables under",
        tmp_path / "legacy": "convert them with `reelscope migrate",
    }
    (tmp_path / "empty").mkdir()
    (tmp_path / "legacy" / "_manifests").mkdir(parents=True)
    (tmp_path / "legacy" / "_manifests" / "shard-00000000000000aa.json").write_text("{}")
    for path, words in cases.items():
        with pytest.raises(OutputError) as refused:
            open_snapshot(str(path))
        assert words in str(refused.value) and "\n" not in str(refused.value)
