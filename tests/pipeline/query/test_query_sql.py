import json

import pyarrow.parquet as pq
import pytest

from pipeline.query import QueryError, open_snapshot
from pipeline.query.sql import connect, json_lines, run_sql
from pipeline.tables import Output, OutputError
from query_helpers import DIM, MODEL, write_archive


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
    stray = tmp_path / "t" / "videos" / "shard-ffffffffffffffff.parquet"
    pq.write_table(out.read_table("videos"), stray)
    with connect(open_snapshot(str(tmp_path / "t"))) as c:
        assert c.execute("SELECT count(*) FROM videos").fetchone() == (3,)


def test_hive_partitions_become_a_column(tmp_path):
    write_archive(Output(str(tmp_path), partition="dt=2026-11-22"))
    with connect(open_snapshot(str(tmp_path))) as c:
        assert c.execute("SELECT DISTINCT CAST(dt AS VARCHAR) FROM keyframes").fetchall() == [("2026-11-22",)]


def test_bad_sql_is_one_line(con):
    with pytest.raises(QueryError) as e:
        run_sql(con, "SELECT nope FROM videos")
    assert "nope" in str(e.value) and "\n" not in str(e.value)


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


def test_s3_reads_the_same_rows_as_local(s3, archive):
    import s3fs

    bucket, opts = s3
    s3fs.S3FileSystem(**opts).put(archive, f"{bucket}/tables", recursive=True)
    query = "SELECT v.uri, k.frame_index, k.caption FROM keyframes k JOIN videos v USING (video_id) ORDER BY 1, 2"
    with connect(open_snapshot(archive)) as local, connect(open_snapshot(f"s3://{bucket}/tables", opts)) as remote:
        assert run_sql(remote, query).equals(run_sql(local, query))
        assert run_sql(remote, query).num_rows == 5
