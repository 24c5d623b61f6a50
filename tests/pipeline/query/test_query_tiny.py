"""Queries over a real tiny-profile output: the query model is loaded from the tables' provenance."""
import io
import json

import numpy as np
import pytest
import yaml
from PIL import Image

from pipeline.query import open_snapshot
from pipeline.query.search import search
from pipeline.query.sql import connect
from pipeline.store import Output
from query_helpers import archive_tasks, write_archive


def test_a_keyframes_own_image_finds_it_first(tiny_output, model_cache):
    snapshot = open_snapshot(tiny_output)
    with connect(snapshot) as con:
        rows = con.execute("SELECT video_id, frame_index, image, embedding FROM keyframes").fetchall()
        vectors = np.array([r[3] for r in rows], np.float32)
        # The most distinctive keyframe: sample videos repeat scenes, and equal frames would tie.
        sims = vectors @ vectors.T
        np.fill_diagonal(sims, -1)
        video_id, frame_index, jpeg, _ = rows[int(sims.max(axis=1).argmin())]
        top = search(con, snapshot, image=Image.open(io.BytesIO(jpeg)), k=3, cache_dir=model_cache)
    assert (top[0].video_id, top[0].frame_index) == (video_id, frame_index)
    assert top[0].signals["visual"] == pytest.approx(1.0, abs=1e-3) and top[0].score == 1.0


def test_search_json_lines_parse(reelscope, tiny_output):
    code, out, err = reelscope("search", "a red car at night", "--output", tiny_output, "--k", 3, "--json")
    assert code == 0, err
    moments = [json.loads(line) for line in out.splitlines()]
    assert 1 <= len(moments) <= 3
    assert set(moments[0]) == {"video_id", "uri", "timestamp_s", "frame_index", "caption", "transcript", "score", "signals"}
    assert "visual" in moments[0]["signals"] and moments[0]["uri"].startswith("file://")


def test_sql_over_s3_returns_the_rows_of_the_local_copy(reelscope, tiny_output, s3, tmp_path):
    import s3fs

    bucket, opts = s3
    s3fs.S3FileSystem(**opts).put(tiny_output, f"{bucket}/tables", recursive=True)
    config = tmp_path / "s3.yaml"
    config.write_text(yaml.safe_dump({"storage_options": opts}))
    query = ("SELECT v.uri, k.frame_index, k.timestamp_s, k.caption, s.title FROM videos v "
             "LEFT JOIN keyframes k USING (video_id) LEFT JOIN summaries s USING (video_id) ORDER BY ALL")
    local = reelscope("sql", query, "--output", tiny_output, "--json")
    remote = reelscope("sql", query, "--output", f"s3://{bucket}/tables", "--config", config, "--json")
    assert local[0] == remote[0] == 0, remote[2]
    assert remote[1] == local[1] and len(local[1].splitlines()) > 3


def test_show_page_carries_every_keyframe(reelscope, tiny_output, tmp_path):
    with connect(open_snapshot(tiny_output)) as con:
        video_id, n = con.execute("SELECT video_id, count(*) FROM keyframes GROUP BY 1 ORDER BY 2 DESC LIMIT 1").fetchone()
    page = tmp_path / "v.html"
    code, _, err = reelscope("show", video_id, "--output", tiny_output, "--html", page)
    assert code == 0, err
    assert page.read_text().count("data:image/jpeg;base64,") == 2 * n


def test_a_model_of_another_dimension_is_refused(reelscope, tmp_path, model_cache):
    shards = archive_tasks()  # 8-d embeddings, recorded as made by the tiny CLIP, which makes wider ones
    for t in shards[0] + shards[1]:
        t.models["embedding"] = "tiny:clip"
    write_archive(Output(str(tmp_path / "t")), shards)
    code, _, err = reelscope("search", "red", "--output", tmp_path / "t")
    # What takes seconds is said first, then the error, on a line of its own.
    assert code == 2 and err.startswith("loading the embedder tiny:clip … reelscope: error: the query model 'tiny:clip' gives")
    assert "-d vectors but the keyframes hold 8-d embeddings" in err
