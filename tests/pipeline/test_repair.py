"""Outputs damaged by overlapping runs and crashes, on real runs of the tiny models: repair, rerun, redo."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from pipeline.config import load_config
from pipeline.repair import repair_output
from pipeline.run import run
from pipeline.tables import Output


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    from pipeline.media.synth import make_video

    d = tmp_path_factory.mktemp("repair-media")
    make_video(d / "a.mp4", [("red", 1.0)], size=(64, 48), fps=10)
    make_video(d / "b.mp4", [("blue", 1.0)], size=(64, 48), fps=10, tone_hz=440.0)
    return d


def _run(folder, out, model_cache, **settings):
    return run(load_config(str(folder), str(out), "tiny", cache_dir=model_cache, **settings))


def _rows(out) -> list[str]:
    return sorted(Output(str(out)).read_table("videos", columns=["video_id"]).column("video_id").to_pylist())


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True, timeout=120)


def test_overlapping_runs_duplicates_are_repaired_and_a_rerun_plans_around_them(media, tmp_path, ray_session, model_cache):
    # What two runs that overlapped left (before the lease): run A on a, b; run B, once c arrived, planned
    # a, b, c afresh into its own shard, and both committed.
    folder = tmp_path / "in"
    shutil.copytree(media, folder)
    out, other = tmp_path / "out", tmp_path / "other"
    _run(folder, out, model_cache, shard_size=2)
    shutil.copy(folder / "a.mp4", folder / "c.mp4")
    _run(folder, other, model_cache, shard_size=3)
    for path in other.rglob("shard-*"):
        target = out / path.relative_to(other)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    assert len(_rows(out)) == 5 and len(set(_rows(out))) == 3

    dry = repair_output(str(out), dry_run=True)
    assert dry[0].startswith("would drop 2 video(s) of shard ") and "nothing left" in dry[0]
    assert dry[-1] == f"dry run: 1 duplicate-rows in {out}" and len(_rows(out)) == 5
    summary = _run(folder, out, model_cache, shard_size=2)  # the run repairs first, then plans
    assert summary.skipped == 3 and summary.shards == 0
    assert _rows(out) == sorted(set(_rows(out))) and len(_rows(out)) == 3
    assert repair_output(str(out)) == [f"nothing to repair in {out}"]


def test_unreadable_manifests_and_orphans_do_not_stop_run_digest_or_sql(media, tmp_path, ray_session, model_cache):
    out = tmp_path / "out"
    _run(media, out, model_cache, shard_size=1)
    manifests = sorted((out / "_manifests").iterdir())
    manifests[0].write_bytes(b"")  # a manifest write that died (the shard's rows become invisible)
    (out / "videos" / "shard-00000000000000ff-aaaaaaaaaaaa.parquet").write_bytes(b"PAR1 left by a killed write")
    sql = _cli("sql", "SELECT count(*) AS n FROM videos", "--output", str(out), "--json")
    assert sql.returncode == 0, sql.stderr
    assert json.loads(sql.stdout.splitlines()[-1]) == {"n": 1}
    assert "unreadable manifest" in sql.stderr and "Traceback" not in sql.stderr
    digest = _cli("digest", "--output", str(out))
    assert digest.returncode == 0 and "Traceback" not in digest.stderr
    repaired = _cli("repair", "--output", str(out))
    assert repaired.returncode == 0, repaired.stderr
    lines = repaired.stdout.splitlines()
    assert any(line.startswith("remove unreadable manifest: ") for line in lines)
    assert any(line.startswith("remove orphan file") and "shard-00000000000000ff" in line for line in lines)
    # The unreadable manifest's four files are orphans too, once nothing names them.
    assert lines[-1].startswith("5 orphan, 1 unreadable-manifest in ")
    summary = _run(media, out, model_cache, shard_size=1)  # the invisible video is done again
    assert (summary.ok, summary.skipped) == (1, 1) and len(_rows(out)) == 2


def test_retry_failed_redoes_only_the_failed_videos_of_a_shard(media, tmp_path, ray_session, model_cache):
    folder = tmp_path / "in"
    shutil.copytree(media, folder)
    (folder / "letter.mp4").write_text("Dear reader, this is not a video.\n")
    out = tmp_path / "out"
    _run(folder, out, model_cache, shard_size=3)
    before = {r["uri"]: r for r in Output(str(out)).read_table("videos").to_pylist()}
    summary = _run(folder, out, model_cache, shard_size=3, retry_failed=True)
    assert (summary.ok, summary.failed, summary.skipped) == (0, 1, 2)
    after = {r["uri"]: r for r in Output(str(out)).read_table("videos").to_pylist()}
    assert after.keys() == before.keys() and len(Output(str(out)).manifests()) == 1
    for uri, row in after.items():
        redone = uri.endswith("letter.mp4")
        assert (row["processed_at"] != before[uri]["processed_at"]) is redone, uri
