"""End to end: a mixed folder of real and broken files through `pipeline.run.run` on the tiny models."""
from __future__ import annotations

import dataclasses
import shutil
from collections import Counter

import numpy as np
import pytest

from pipeline.config import load_config
from pipeline.query.encoder import model_ref
from pipeline.run import run
from pipeline.store import Output, open_snapshot, read_commits
from schemas import SCHEMA_VERSION, SEGMENTS, SUMMARIES, VIDEOS, keyframes_schema
from schemas.commit import ModelRef


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory):
    from pipeline.media.synth import make_video

    d = tmp_path_factory.mktemp("mixed")
    make_video(d / "scenes.mp4", [("red", 2.0), ("lime", 2.0), ("blue", 2.0)], tone_hz=440.0, gop=250)
    make_video(d / "sub" / "pattern.mkv", [("black", 3.0)], test_pattern=True)
    good = (d / "scenes.mp4").read_bytes()
    (d / "empty.mp4").write_bytes(b"")
    (d / "noise.mov").write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    (d / "truncated.mp4").write_bytes(good[: len(good) // 3])
    (d / "letter.mp4").write_text("Dear reader, this is not a video.\n" * 20)
    (d / "notes.txt").write_text("ignored: not a video extension")
    return d


@pytest.fixture(scope="module")
def first_run(mixed_folder, tmp_path_factory, ray_session, model_cache):
    out = tmp_path_factory.mktemp("out")
    config = load_config(str(mixed_folder), str(out), "tiny", cache_dir=model_cache, shard_size=4)
    return config, run(config)


def _rows(output, table, opts=None):
    return open_snapshot(output, opts).read(table).sort_by([("video_id", "ascending")])


def test_every_input_recorded_exactly_once(first_run, mixed_folder):
    config, summary = first_run
    videos = _rows(config.output, "videos").to_pylist()
    names = sorted(v["uri"].rsplit("/", 1)[-1] for v in videos)
    assert names == ["empty.mp4", "letter.mp4", "noise.mov", "pattern.mkv", "scenes.mp4", "truncated.mp4"]
    assert len({v["video_id"] for v in videos}) == 6
    status = {v["uri"].rsplit("/", 1)[-1]: (v["status"], v["error"]) for v in videos}
    assert status["scenes.mp4"] == ("ok", None) and status["pattern.mkv"] == ("ok", None)
    for bad in ("empty.mp4", "letter.mp4", "noise.mov", "truncated.mp4"):
        state, error = status[bad]
        assert state == "failed" and error.startswith("decode: ") and len(error.splitlines()) == 1
    assert "empty" in status["empty.mp4"][1]
    assert (summary.discovered, summary.ok, summary.failed, summary.skipped) == (6, 2, 4, 0)
    assert summary.shards == 2


def test_tables_conform_and_carry_the_content(first_run):
    config, summary = first_run
    out = open_snapshot(config.output)
    videos = out.read("videos")
    keyframes = out.read("keyframes")
    assert videos.schema.equals(VIDEOS)
    assert out.read("segments").schema.equals(SEGMENTS)
    assert out.read("summaries").schema.equals(SUMMARIES)
    dim = keyframes.schema.field("embedding").type.list_size
    assert keyframes.schema.equals(keyframes_schema(dim))
    scenes = next(v for v in videos.to_pylist() if v["uri"].endswith("scenes.mp4"))
    assert scenes["duration_s"] == pytest.approx(6.0, abs=0.1) and scenes["has_audio"] is True
    kf = [k for k in keyframes.to_pylist() if k["video_id"] == scenes["video_id"]]
    assert [round(k["timestamp_s"]) for k in sorted(kf, key=lambda k: k["timestamp_s"])] == [0, 2, 4]
    assert all(k["image"][:2] == b"\xff\xd8" and isinstance(k["caption"], str) for k in kf)
    emb = np.array([k["embedding"] for k in kf], dtype=np.float32)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert {k["embedding_model"] for k in kf} == {"tiny:clip"} and {k["caption_model"] for k in kf} == {"tiny:blip2"}
    pattern = next(v for v in videos.to_pylist() if v["uri"].endswith("pattern.mkv"))
    assert pattern["has_audio"] is False and pattern["num_segments"] == 0
    segments = out.read("segments").to_pylist()
    assert {s["video_id"] for s in segments} <= {scenes["video_id"]}
    assert all(0 <= s["start_s"] <= s["end_s"] <= 6.5 for s in segments)
    summaries = out.read("summaries").to_pylist()
    assert sorted(s["video_id"] for s in summaries) == sorted([scenes["video_id"], pattern["video_id"]])
    for s in summaries:
        # Decoded under the answer's schema, even random weights give the asked shape.
        assert s["status"] == "ok" and s["summary"]
    manifests = [c for c in out.commits if c.kind == "shard"]
    assert len(manifests) == 2
    assert all(m.schema_version == SCHEMA_VERSION and m.config_fingerprint == config.fingerprint() for m in manifests)
    assert manifests[0].model_refs["embedding"] == ModelRef("tiny:clip", name="tiny:clip")
    # Search finds the embedding model's ref by the name the keyframes record, in the commit records as written.
    moved = dataclasses.replace(manifests[0], model_refs={"embedding": ModelRef("s3://m/clip", name="tiny:clip")})
    assert model_ref("tiny:clip", [moved]) == ("s3://m/clip", None)
    assert summary.keyframes == keyframes.num_rows and summary.summaries == 2
    # Per stage: what it took in, what came out ok, what it failed and why, summed over the shards.
    stages = [m.stages for m in manifests]
    assert sum(s["decode"].taken for s in stages) == 6 and sum(s["decode"].ok for s in stages) == 2
    reasons = Counter()
    for s in stages:
        reasons.update(s["decode"].failed)
    assert sum(reasons.values()) == 4 and any("moov atom not found" in r for r in reasons)
    assert sum(s["summary"].taken for s in stages) == 2 and all(s["caption"].failed == {} for s in stages)
    assert all(st.seconds >= 0 for s in stages for st in s.values())
    assert set(summary.stage_seconds) >= {"decode", "asr", "caption", "embedding", "summary", "write"}


def test_second_run_is_a_noop_and_force_redoes_without_duplicates(first_run):
    config, _ = first_run
    before = {t: _rows(config.output, t) for t in ("videos", "keyframes", "segments", "summaries")}
    again = run(config)
    assert (again.skipped, again.ok, again.failed, again.shards) == (6, 0, 0, 0)
    for table, rows in before.items():
        assert _rows(config.output, table).equals(rows), table
    forced = run(load_config(config.input, config.output, "tiny", cache_dir=config.cache_dir, shard_size=4, force=True))
    assert (forced.ok, forced.failed, forced.skipped) == (2, 4, 0)
    for table, rows in before.items():
        after = _rows(config.output, table)
        assert after.num_rows == rows.num_rows, table
        assert after.column("video_id").equals(rows.column("video_id"))


def test_changed_file_is_redone_alone(first_run, mixed_folder, tmp_path):
    config, _ = first_run
    copy_in = tmp_path / "in"
    shutil.copytree(mixed_folder, copy_in)
    out = tmp_path / "out"
    cfg = load_config(str(copy_in), str(out), "tiny", cache_dir=config.cache_dir, shard_size=8)
    run(cfg)
    # Replace a broken file by a real video: its row turns ok, nothing is duplicated.
    shutil.copy(copy_in / "scenes.mp4", copy_in / "letter.mp4")
    summary = run(cfg)
    assert (summary.ok, summary.failed, summary.skipped) == (1, 0, 5)  # its shard keeps the other rows
    videos = _rows(str(out), "videos").to_pylist()
    assert len(videos) == 6
    assert next(v for v in videos if v["uri"].endswith("letter.mp4"))["status"] == "ok"


def test_s3_input_and_output(s3, ray_session, model_cache, mixed_folder):
    import s3fs

    bucket, opts = s3
    fs = s3fs.S3FileSystem(**opts)
    fs.put(str(mixed_folder / "scenes.mp4"), f"{bucket}/media/scenes.mp4")
    fs.put(str(mixed_folder / "noise.mov"), f"{bucket}/media/noise.mov")
    cfg = load_config(f"s3://{bucket}/media", f"s3://{bucket}/tables", "tiny", cache_dir=model_cache, storage_options=opts)
    summary = run(cfg)
    assert (summary.ok, summary.failed) == (1, 1)
    assert _rows(cfg.output, "videos", opts).num_rows == 2 and _rows(cfg.output, "keyframes", opts).num_rows == 3
    assert fs.exists(f"{bucket}/tables/videos/_delta_log/00000000000000000001.json")
    assert run(cfg).skipped == 2


def test_nothing_decodable_waits_for_no_model_and_mixes_with_later_shards(tmp_path, ray_session, model_cache):
    from pipeline.media.synth import make_video
    from pipeline.query.sql import connect, run_sql

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "letter.mp4").write_text("Dear reader, this is not a video.\n" * 20)
    config = load_config(str(tmp_path / "in"), str(tmp_path / "out"), "tiny", cache_dir=model_cache)
    summary = run(config)
    assert (summary.ok, summary.failed) == (0, 1)
    # The shard went from decode straight to its commit: no stage call, so the run never waited for a model.
    assert "load models" not in summary.stage_seconds and "asr" not in summary.stage_seconds
    (record,) = read_commits(Output(config.output))
    assert record.embedding_dim is None and record.rows["keyframes"] == 0

    make_video(tmp_path / "in" / "scenes.mp4", [("red", 1.0), ("blue", 1.0)])
    assert run(config).ok == 1
    # The width-less empty shard neither breaks reading the table nor the vector type SQL gives it.
    assert _rows(config.output, "keyframes").num_rows > 0
    con = connect(open_snapshot(config.output))
    (dim,) = {m.embedding_dim for m in read_commits(Output(config.output))} - {None}
    assert run_sql(con, "SELECT typeof(embedding) AS t FROM keyframes LIMIT 1").to_pylist() == [{"t": f"FLOAT[{dim}]"}]
