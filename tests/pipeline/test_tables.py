import datetime as dt
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.rows import build_tables
from pipeline.tables import Output
from pipeline.task import FrameRecord, VideoTask
from schemas import SCHEMA_VERSION, SEGMENTS, SUMMARIES, TABLES, VIDEOS, keyframes_schema
from schemas.manifest import ShardManifest

NOW = dt.datetime(2026, 11, 23, tzinfo=dt.timezone.utc)


def _tables(shard_id="0123456789abcdef", dim=4):
    from pipeline.media.probe import ProbeResult
    from pipeline.models.whisper import TranscriptSegment
    from pipeline.summarize import SummaryResult

    ok = VideoTask("v1", "file:///a.mp4", "fp1", 100)
    ok.probe = ProbeResult(duration_s=4.0, width=32, height=24, fps=25.0, num_frames=100, codec="h264",
                           has_audio=True, rotation=0, audio_codec="aac", audio_sample_rate=44100)
    vec = np.ones(dim, np.float32) / np.sqrt(dim)
    ok.frames = [FrameRecord(0, 0.0, b"\xff\xd8jpeg", 32, 24, 1.0, "a red frame", vec),
                 FrameRecord(50, 2.0, b"\xff\xd8jpeg2", 32, 24, 0.8, "green", vec)]
    ok.segments = [TranscriptSegment(0.0, 1.5, "hello")]
    ok.language = "en"
    ok.summary = SummaryResult(title="T", summary="S", timeline=[{"timestamp_s": 1.0, "text": "x"}],
                               status="ok", raw=None, chunks=1)
    ok.models = {"asr": "w", "caption": "b", "embedding": "c", "summary": "l"}
    bad = VideoTask("v2", "file:///b.mp4", "fp2", 0)
    bad.fail("decode", "empty file (0 bytes)")
    return build_tables([ok, bad], shard_id=shard_id, config_fingerprint="cfg", embedding_dim=dim,
                        model_names={"asr": "w", "summary": "l"}, processed_at=NOW)


def test_rows_follow_the_schemas():
    t = _tables()
    assert t["videos"].schema.equals(VIDEOS) and t["segments"].schema.equals(SEGMENTS)
    assert t["summaries"].schema.equals(SUMMARIES) and t["keyframes"].schema.equals(keyframes_schema(4))
    assert t["videos"].column("status").to_pylist() == ["ok", "failed"]
    assert t["videos"].column("error").to_pylist() == [None, "decode: empty file (0 bytes)"]
    assert t["keyframes"].num_rows == 2 and t["summaries"].num_rows == 1
    emb = t["keyframes"].column("embedding")
    assert pa.types.is_fixed_size_list(emb.type) and emb.type.list_size == 4
    assert np.allclose(np.linalg.norm(np.array(emb.to_pylist()), axis=1), 1.0)


def test_write_commit_read_and_retract(tmp_path):
    out = Output(str(tmp_path / "out"))
    tables = _tables()
    manifest = out.write_shard("0123456789abcdef", tables, ShardManifest(config_fingerprint="cfg"))
    assert manifest.files["keyframes"].rows == 2 and manifest.schema_version == SCHEMA_VERSION
    assert out.manifests() == [manifest]  # read back as written
    for name in TABLES:
        f = tmp_path / "out" / manifest.files[name].path
        assert f.parent.name == name and f.name.startswith("shard-0123456789abcdef-")
        meta = pq.read_metadata(f)
        assert meta.row_group(0).column(0).compression == "ZSTD"
        assert pq.read_schema(f).equals(tables[name].schema)
    assert out.read_table("videos").num_rows == 2
    # Files without a manifest are invisible to readers.
    stray = tmp_path / "out" / "videos" / "shard-ffffffffffffffff.parquet"
    pq.write_table(tables["videos"], stray)
    assert out.read_table("videos").num_rows == 2
    # Rewriting a shard replaces it: rows are never duplicated.
    out.write_shard("0123456789abcdef", tables, ShardManifest(config_fingerprint="cfg"))
    assert out.read_table("videos").num_rows == 2
    out.retract("0123456789abcdef")
    assert out.manifests() == [] and out.read_table("videos").num_rows == 0


def test_refuses_shards_without_an_id(tmp_path):
    with pytest.raises(ValueError, match="shard id"):
        Output(str(tmp_path)).write_shard("../x", _tables(), ShardManifest())


def test_partitions_and_clear(tmp_path):
    a = Output(str(tmp_path), partition="dt=2026-11-21")
    b = Output(str(tmp_path), partition="dt=2026-11-22")
    a.write_shard("00000000000000aa", _tables(), ShardManifest())
    b.write_shard("00000000000000bb", _tables(), ShardManifest())
    assert [p.name[:23] for p in (tmp_path / "videos" / "dt=2026-11-22").iterdir()] == ["shard-00000000000000bb-"]
    assert len(Output(str(tmp_path)).manifests(all_partitions=True)) == 2
    assert Output(str(tmp_path)).read_table("videos").num_rows == 4
    assert b.clear_partition() == 1
    assert Output(str(tmp_path)).read_table("videos").num_rows == 2


def test_s3_commit_is_a_conditional_put(s3):
    import s3fs

    bucket, opts = s3
    out = Output(f"s3://{bucket}/tables", opts)
    out.check_writable()
    out.write_shard("0123456789abcdef", _tables(), ShardManifest())
    fs = s3fs.S3FileSystem(**opts)
    body = json.loads(fs.cat(f"{bucket}/tables/_manifests/shard-0123456789abcdef.json"))
    assert body["files"]["videos"]["rows"] == 2
    # The commit marker is created exactly once: a second create of the same key is refused by the server.
    with pytest.raises(FileExistsError):
        fs.pipe_file(f"{bucket}/tables/_manifests/shard-0123456789abcdef.json", b"{}", mode="create")
    assert out.read_table("keyframes").num_rows == 2


def test_manifests_of_older_runs_read_with_todays_role_names():
    old = (
        '{"config_fingerprint": "f", "models": {"asr": "w", "embedder": "c"}, '
        '"model_refs": {"embedder": {"ref": "tiny:clip", "name": "tiny:clip"}}, '
        '"stages": {"transcribe": {"in": 2, "ok": 1, "failed": {"x": 1}, "seconds": 0.5}}}'
    )
    m = ShardManifest.from_json(old)
    assert m.models == {"asr": "w", "embedding": "c"}
    assert m.model_refs["embedding"].ref == "tiny:clip"
    assert m.stages["asr"].taken == 2 and m.stages["asr"].failed == {"x": 1}
    assert ShardManifest.from_json(m.to_json()) == m
