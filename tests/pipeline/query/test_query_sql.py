import json

import duckdb
import pyarrow.parquet as pq
import pytest
from deltalake import write_deltalake
from rich.console import Console

from pipeline.query import QueryError, open_snapshot
from pipeline.query.search import search
from pipeline.query.show import find_video, load_digest, print_video
from pipeline.query.sql import connect, json_lines, run_sql
from pipeline.store import Output, OutputError
from query_helpers import DIM, MODEL, ColourEncoder, archive_tasks, shard_tables, write_archive


def test_views_over_the_four_tables(con):
    counts = dict(con.execute(
        "SELECT 'videos', count(*) FROM videos UNION ALL SELECT 'keyframes', count(*) FROM keyframes "
        "UNION ALL SELECT 'segments', count(*) FROM segments UNION ALL SELECT 'summaries', count(*) FROM summaries"
    ).fetchall())
    assert counts == {"videos": 3, "keyframes": 5, "segments": 5, "summaries": 2}
    assert con.execute("SELECT status, error FROM videos WHERE uri LIKE '%broken%'").fetchone() == (
        "failed", "decode: moov atom not found")


def test_embeddings_are_arrays_for_the_vector_functions(con):
    (kind,) = con.execute("SELECT typeof(embedding) FROM keyframes LIMIT 1").fetchone()
    assert kind == f"FLOAT[{DIM}]"
    rows = con.execute(
        "SELECT a.caption, b.caption FROM keyframes a, keyframes b WHERE a.frame_index = 0 AND a.caption LIKE '%red car%' "
        "AND b.caption <> a.caption ORDER BY array_cosine_similarity(a.embedding, b.embedding) DESC LIMIT 1"
    ).fetchall()
    assert rows == [("a red car parked on a street", "a red apple on a table")]


def test_only_committed_files_are_visible(tmp_path):
    out = write_archive(Output(str(tmp_path / "t")))
    snapshot = open_snapshot(out.uri)
    # A Parquet file the Delta log does not name (a writer killed before its commit) is not read.
    pq.write_table(snapshot.dataset("videos").to_table(), tmp_path / "t" / "videos" / "part-stray.parquet")
    # Nor are the files a rewritten shard replaced (still on disk until vacuumed).
    write_archive(out, archive_tasks()[:1])
    with connect(open_snapshot(out.uri)) as c:
        assert c.execute("SELECT count(*) FROM videos").fetchone() == (3,)
        assert c.execute("SELECT count(*) FROM keyframes").fetchone() == (5,)


def test_partitions_become_a_column(tmp_path):
    write_archive(Output(str(tmp_path), partition="dt=2026-11-22"))
    assert (tmp_path / "keyframes" / "dt=2026-11-22").is_dir()  # hive-style folders, a real column in Delta
    with connect(open_snapshot(str(tmp_path))) as c:
        assert c.execute("SELECT DISTINCT CAST(dt AS VARCHAR) FROM keyframes").fetchall() == [("2026-11-22",)]
        assert c.execute("SELECT count(*) FROM videos WHERE dt = '2026-11-22'").fetchone() == (3,)


def test_a_snapshot_reads_the_versions_it_pinned_while_a_writer_commits(tmp_path):
    out = write_archive(Output(str(tmp_path / "t")), archive_tasks()[:1])
    snapshot = open_snapshot(out.uri)
    with connect(snapshot) as before:
        write_archive(out, archive_tasks())  # kitchen's shard, committed while the connection is open
        assert before.execute("SELECT count(*) FROM videos").fetchone() == (2,)
        assert before.execute("SELECT count(*) FROM keyframes").fetchone() == (3,)
    with connect(snapshot) as again:  # the same snapshot, connected again: the same rows
        assert again.execute("SELECT count(*) FROM keyframes").fetchone() == (3,)
    later = open_snapshot(out.uri)
    assert later.key != snapshot.key
    with connect(later) as after:
        assert after.execute("SELECT count(*) FROM videos").fetchone() == (3,)
        assert after.execute("SELECT count(*) FROM keyframes").fetchone() == (5,)


def _children_without_videos(output: Output, tasks, shard_id: str) -> None:
    """What a writer leaves between its children's commits and its ``videos`` commit."""
    tables = shard_tables(tasks, shard_id)
    for name in ("keyframes", "segments", "summaries"):
        write_deltalake(output.table_uri(name), tables[name], mode="append", storage_options=output.delta_options)


def test_children_of_a_video_not_committed_yet_are_not_shown(tmp_path):
    (street, broken), (kitchen,) = archive_tasks()
    out = write_archive(Output(str(tmp_path / "t")), [[street, broken]])
    _children_without_videos(out, [kitchen], "00000000000000ff")
    # A shard killed before its videos commit, whose street another shard holds: its children stay behind.
    _children_without_videos(out, [street], "00000000000000fe")
    write_archive(out, [[street, broken]])  # another shard's commit record pins versions holding those children
    snapshot = open_snapshot(out.uri)
    assert snapshot.dataset("keyframes").count_rows() == 8  # kitchen's keyframes are in the pinned version...
    assert snapshot.read("keyframes").num_rows == 3  # ...but not a video of the snapshot
    with connect(snapshot) as c:
        counts = c.execute("SELECT (SELECT count(*) FROM keyframes), (SELECT count(*) FROM segments), "
                           "(SELECT count(*) FROM summaries), (SELECT count(*) FROM videos)").fetchone()
        assert counts == (3, 3, 1, 2)
        found = search(c, snapshot, text="yellow lamp dinner", encoder=ColourEncoder(), cache_dir=tmp_path / "cache")
        assert found and {m.uri.rsplit("/", 1)[-1] for m in found} == {"street.mp4"}
        with pytest.raises(QueryError, match="no video 'kitchen.mp4'"):
            find_video(c, "kitchen.mp4")
        console = Console(record=True, width=120)
        print_video(console, load_digest(c, find_video(c, "street.mp4")))
        assert "red car" in console.export_text() and "kitchen" not in console.export_text()


def test_bad_sql_is_one_line(con):
    with pytest.raises(QueryError) as e:
        run_sql(con, "SELECT nope FROM videos")
    assert "nope" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("statement, refused", [
    ("COPY (SELECT * FROM videos) TO '{tmp}/x.csv'", duckdb.PermissionException),
    ("SELECT * FROM read_csv('/etc/passwd')", duckdb.PermissionException),
    ("SELECT * FROM read_parquet('{tmp}/*.parquet')", duckdb.PermissionException),
    ("ATTACH '{tmp}/x.db' AS x", duckdb.PermissionException),
    ("INSTALL httpfs", duckdb.PermissionException),
    ("LOAD httpfs", duckdb.PermissionException),
    ("SET enable_external_access = true", duckdb.InvalidInputException),  # locked
    ("RESET lock_configuration", duckdb.InvalidInputException),
])
def test_the_connection_itself_opens_no_file(con, tmp_path, statement, refused):
    """DuckDB's own guard, under the statement-type check of ``run_sql``: the datasets are scanned by
    pyarrow, so DuckDB's file access stays off, and locked."""
    (tmp_path / "x.parquet").write_bytes(b"")
    with pytest.raises(refused):
        con.execute(statement.format(tmp=tmp_path))
    assert [p.name for p in tmp_path.iterdir()] == ["x.parquet"]
    assert con.execute("SELECT count(*) FROM keyframes").fetchone() == (5,)  # and the tables still read


def test_the_views_are_the_only_tables(con):
    assert sorted(r[0] for r in con.execute("SHOW TABLES").fetchall()) == ["keyframes", "segments", "summaries", "videos"]


def test_writes_when_allowed(archive, tmp_path):
    with connect(open_snapshot(archive), allow_writes=True) as c:
        run_sql(c, f"COPY (SELECT uri FROM videos ORDER BY uri) TO '{tmp_path}/uris.csv'", allow_writes=True)
    assert "file:///archive/kitchen.mp4" in (tmp_path / "uris.csv").read_text()


def test_json_lines_parse(con):
    rows = [json.loads(line) for line in json_lines(run_sql(con, "SELECT * FROM keyframes ORDER BY video_id, frame_index"))]
    assert len(rows) == 5 and len(rows[0]["embedding"]) == DIM and rows[0]["embedding_model"] == MODEL
    assert rows[0]["processed_at"].startswith("2026-11-23T00:00:00")
    assert isinstance(rows[0]["image"], str)  # JPEG bytes as base64


def test_missing_and_empty_outputs(tmp_path):
    with pytest.raises(OutputError, match="does not exist"):
        open_snapshot(str(tmp_path / "missing"))
    with pytest.raises(OutputError, match="no reelscope tables"):
        open_snapshot(str(tmp_path))


def _moments(found):
    return [(m.uri, m.timestamp_s, m.frame_index, m.caption, m.transcript, m.score, m.signals) for m in found]


def test_sql_and_search_read_an_s3_output_as_a_local_one(s3, archive, tmp_path):
    bucket, opts = s3
    uri = f"s3://{bucket}/tables"
    write_archive(Output(uri, opts))  # committed to S3 by delta-rs, with the same fsspec options mapped
    query = "SELECT v.uri, k.frame_index, k.caption FROM keyframes k JOIN videos v USING (video_id) ORDER BY 1, 2"
    local_snapshot, remote_snapshot = open_snapshot(archive), open_snapshot(uri, opts)
    assert remote_snapshot.embedding_dim == DIM
    with connect(local_snapshot) as local, connect(remote_snapshot) as remote:
        assert run_sql(remote, query).equals(run_sql(local, query))
        assert run_sql(remote, query).num_rows == 5
        assert remote.execute("SELECT typeof(embedding) FROM keyframes LIMIT 1").fetchone() == (f"FLOAT[{DIM}]",)
        kw = dict(text="a red car", k=3, encoder=ColourEncoder())
        here = search(local, local_snapshot, cache_dir=tmp_path / "local", **kw)
        there = search(remote, remote_snapshot, cache_dir=tmp_path / "remote", **kw)
        assert _moments(there) == _moments(here) and there[0].uri.endswith("street.mp4")
        # show reads one video through the same connection, from S3 as from the local folder.
        remote_video, local_video = (load_digest(c, find_video(c, "street.mp4")) for c in (remote, local))
        assert remote_video.segments == local_video.segments and len(remote_video.keyframes) == 3
        assert [k["image"] for k in remote_video.keyframes] == [k["image"] for k in local_video.keyframes]
        # The lock holds for a remote output too: its datasets read, DuckDB's own file access stays off.
        with pytest.raises(duckdb.PermissionException):
            remote.execute(f"COPY (SELECT 1) TO '{tmp_path}/x.csv'")
