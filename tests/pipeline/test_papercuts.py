"""What a newcomer trips over first: samples rewritten, fingerprints that follow times, silent empty runs,
a digest that cannot read S3, tiny models' noise shown as meaning, an sql that writes files."""
from __future__ import annotations

import datetime as dt
import json
import os

import pytest
from typer.testing import CliRunner

from pipeline import cli
from pipeline.discover import VIDEO_EXTENSIONS, discover
from pipeline.rows import build_tables
from pipeline.store import Output, commit_shard
from schemas.commit import CommitRecord
from tests.pipeline.query.query_helpers import DIM, archive_tasks


def _archive(output: Output, profile: str) -> str:
    tasks = [t for shard in archive_tasks() for t in shard]
    tables = build_tables(tasks, shard_id="0" * 16, config_fingerprint="cfg", embedding_dim=DIM,
                          model_names={"asr": "test:asr", "summary": "test:llm"},
                          processed_at=dt.datetime(2026, 11, 23, tzinfo=dt.timezone.utc))
    record = CommitRecord(run="test", shard_id="0" * 16, config_fingerprint="cfg", embedding_dim=DIM, profile=profile)
    commit_shard(output, tables, record, planned_version=-1)
    return output.uri


def test_sample_twice_leaves_identical_files_alone(tmp_path):
    runner = CliRunner()
    assert runner.invoke(cli.app, ["sample", str(tmp_path), "--broken"]).exit_code == 0
    first = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in tmp_path.iterdir()}
    for p in tmp_path.iterdir():  # times in the past: a rewrite could not hide inside the clock's resolution
        os.utime(p, ns=(1_000_000_000, 1_000_000_000))
    assert runner.invoke(cli.app, ["sample", str(tmp_path), "--broken"]).exit_code == 0
    again = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in tmp_path.iterdir()}
    assert again.keys() == first.keys() and "broken.mp4" in again
    assert all(mtime == 1_000_000_000 and again[n][1] == first[n][1] for n, (mtime, _) in again.items())


def test_fingerprint_follows_content_not_time(tmp_path):
    small, big = tmp_path / "a.mp4", tmp_path / "b.mkv"
    small.write_bytes(b"a" * 1000)
    big.write_bytes(b"\0" * (9 * 1024**2))
    before = {os.path.basename(i.uri): i.input_fingerprint for i in discover(str(tmp_path))}
    os.utime(small, (1, 1))
    os.utime(big, (1, 1))
    assert {os.path.basename(i.uri): i.input_fingerprint for i in discover(str(tmp_path))} == before
    small.write_bytes(b"b" * 1000)  # same size, other bytes
    with open(big, "r+b") as f:  # the last byte of a large file: inside its hashed tail
        f.seek(-1, os.SEEK_END)
        f.write(b"\1")
    after = {os.path.basename(i.uri): i.input_fingerprint for i in discover(str(tmp_path))}
    assert after["a.mp4"] != before["a.mp4"] and after["b.mkv"] != before["b.mkv"]


def test_fingerprint_on_s3_is_the_etag(s3):
    import s3fs

    bucket, opts = s3
    fs = s3fs.S3FileSystem(**opts)
    fs.pipe(f"{bucket}/in/a.mp4", b"a" * 1000)
    (first,) = discover(f"s3://{bucket}/in/", opts)
    fs.pipe(f"{bucket}/in/a.mp4", b"a" * 1000)  # rewritten, same bytes: a new time, the same ETag
    fs.invalidate_cache()
    assert discover(f"s3://{bucket}/in/", opts)[0].input_fingerprint == first.input_fingerprint
    fs.pipe(f"{bucket}/in/a.mp4", b"b" * 1000)
    fs.invalidate_cache()
    assert discover(f"s3://{bucket}/in/", opts)[0].input_fingerprint != first.input_fingerprint


def test_no_videos_found_says_where_it_looked(cli_run, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("not a video")
    code, out, err = cli_run("run", tmp_path / "in", "--output", tmp_path / "out")
    assert code == 0 and "videos found" in out
    assert f"no videos found under {tmp_path / 'in'} (searched recursively for" in err
    assert all(ext in err for ext in VIDEO_EXTENSIONS)


def test_digest_reads_s3_with_the_config_file(cli_run, s3, tmp_path, monkeypatch):
    bucket, opts = s3
    _archive(Output(f"s3://{bucket}/t", opts), "test")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):  # only the config file knows the credentials
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    (tmp_path / "c.yaml").write_text(json.dumps({"storage_options": opts}))
    code, out, err = cli_run("digest", "--output", f"s3://{bucket}/t", "--config", tmp_path / "c.yaml")
    assert code == 0 and "kitchen.mp4" in out and "3 videos" in out, err


@pytest.mark.parametrize("profile", ["tiny", "test"])
def test_tiny_models_noise_is_said_once(cli_run, tmp_path, profile):
    uri = _archive(Output(str(tmp_path / "t")), profile)
    for args in (["digest"], ["show", "kitchen.mp4"], ["sql", "SELECT 1"]):
        code, out, err = cli_run(*args, "--output", uri)
        assert code == 0, err
        assert (out + err).count("tiny profile, whose models have random weights") == (profile == "tiny")


@pytest.fixture
def archive(tmp_path) -> str:
    return _archive(Output(str(tmp_path / "t")), "test")


@pytest.mark.parametrize("statement, refused", [
    ("SELECT 1; SELECT 2", "sql runs exactly one statement; this text holds 2"),
    ("COPY (SELECT * FROM videos) TO '{tmp}/x.csv'", "sql is read-only: a COPY statement is refused"),
    ("EXPLAIN ANALYZE COPY (SELECT 1) TO '{tmp}/x.csv'", "sql is read-only (--allow-writes lifts this)"),
    ("ATTACH '{tmp}/x.db' AS x", "sql is read-only: a ATTACH statement is refused"),
    ("INSTALL httpfs", "sql is read-only: a LOAD statement is refused"),
    ("CREATE TABLE t AS SELECT 1", "sql is read-only: a CREATE statement is refused"),
    ("EXPORT DATABASE '{tmp}/e'", "sql is read-only: a EXPORT statement is refused"),
    ("SELECT * FROM read_csv('/etc/hostname')", "sql is read-only (--allow-writes lifts this)"),
])
def test_sql_is_one_read_only_statement(cli_run, archive, tmp_path, statement, refused):
    code, out, err = cli_run("sql", statement.format(tmp=tmp_path), "--output", archive)
    assert code == 2 and refused in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]  # nothing written


def test_sql_writes_when_allowed(cli_run, archive, tmp_path):
    code, _, err = cli_run("sql", f"COPY (SELECT uri FROM videos) TO '{tmp_path}/uris.csv'", "--output", archive,
                             "--allow-writes")
    assert code == 0, err
    assert "file:///archive/kitchen.mp4" in (tmp_path / "uris.csv").read_text()
    code, _, err = cli_run("sql", "SELECT 1; SELECT 2", "--output", archive, "--allow-writes")
    assert code == 2 and "exactly one statement" in err
