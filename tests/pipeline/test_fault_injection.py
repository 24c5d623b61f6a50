"""Kill runs at random points, fail writes at every step, run two at once: committed rows are never lost,
never hidden, never doubled."""
from __future__ import annotations

import collections
import os
import random
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from pipeline.tables import Output
from schemas import TABLES
from schemas.manifest import ShardManifest
from tests.pipeline.test_tables import _tables

SEED = 9
KILLS = 20


def assert_consistent(out: Output) -> collections.Counter:
    """Every manifest readable, its files there with its row counts, no video twice; returns rows per video."""
    entries = out.manifest_entries(all_partitions=True)
    assert all(m is not None for _, m in entries), [p for p, m in entries if m is None]
    for _, m in entries:
        for table in TABLES:
            with out.fs.open(out.file_path(m, table), "rb") as f:
                assert pq.ParquetFile(f).metadata.num_rows == m.files[table].rows
    rows = collections.Counter(out.read_table("videos", columns=["video_id"]).column("video_id").to_pylist())
    assert max(rows.values(), default=1) == 1, rows
    return rows


class Killed(BaseException):
    """Stands for SIGKILL inside a write: nothing after it runs, no handler sees it as an error."""


def test_a_redo_killed_at_every_filesystem_step_shows_old_or_new_rows(tmp_path, monkeypatch):
    out = Output(str(tmp_path))
    out.write_shard("0123456789abcdef", _tables(), ShardManifest(config_fingerprint="cfg", committed_at="old"))
    steps = {"fsync": os.fsync, "replace": os.replace, "link": os.link, "unlink": os.unlink}
    outcomes, current = collections.Counter(), "old"
    for step, real in steps.items():
        for n in range(1, 12):
            calls = [0]

            def fail_at_n(*args, _real=real, _n=n, **kwargs):
                calls[0] += 1
                if calls[0] == _n:
                    raise Killed
                return _real(*args, **kwargs)

            monkeypatch.setattr(os, step, fail_at_n)
            attempt = ShardManifest(config_fingerprint="cfg", committed_at=f"{step}{n}")
            try:
                out.write_shard("0123456789abcdef", _tables(), attempt)
                outcomes["completed"] += 1
            except Killed:
                outcomes["killed"] += 1
            monkeypatch.undo()
            assert sorted(assert_consistent(out)) == ["v1", "v2"]
            [m] = out.manifests()
            assert m.committed_at in (current, attempt.committed_at)  # the old rows or the new, whole
            current = m.committed_at
    assert outcomes["killed"] >= 10 and outcomes["completed"] >= 1


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from pipeline.media.synth import make_video

    d = tmp_path_factory.mktemp("fault-media")
    make_video(d / "a.mp4", [("red", 1.0)], size=(64, 48), fps=10)
    make_video(d / "b.mp4", [("lime", 0.5), ("blue", 0.5)], size=(64, 48), fps=10, tone_hz=440.0)
    make_video(d / "c.mp4", [("yellow", 1.0)], size=(64, 48), fps=10)
    return d


def _cli_run(folder, out, env) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "run", str(folder), "--output", str(out), "--shard-size", "1"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )


@pytest.fixture(scope="module")
def env(ray_session, model_cache):
    """Runs join the session's Ray (no start-up per run) and share its tiny-model cache."""
    address = ray_session.get_runtime_context().gcs_address
    return {**os.environ, "RAY_ADDRESS": address, "REELSCOPE_CACHE": model_cache}


def test_runs_killed_at_random_points_never_lose_or_double_rows(folder, tmp_path, env):
    out = tmp_path / "out"
    rng = random.Random(SEED)
    for _ in range(KILLS):
        proc = _cli_run(folder, out, env)
        try:
            proc.wait(timeout=rng.uniform(1.0, 6.0))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if out.exists():
            assert_consistent(Output(str(out)))
    final = _cli_run(folder, out, env)
    stdout, stderr = final.communicate(timeout=300)
    assert final.returncode == 0, stderr[-2000:]
    rows = assert_consistent(Output(str(out)))
    assert len(rows) == 3 and set(rows.values()) == {1}


def test_a_second_run_on_the_same_output_is_refused_while_the_first_holds_it(folder, tmp_path, env):
    out = tmp_path / "out"
    first = _cli_run(folder, out, env)
    deadline = time.time() + 60
    while not (out / "_lease.json").exists() and time.time() < deadline:
        time.sleep(0.05)
    second = _cli_run(folder, out, env)
    _, stderr = second.communicate(timeout=120)
    assert second.returncode == 2
    assert stderr.count("\n") == 1 and "is in use by run run-" in stderr and "expires" in stderr
    stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr[-2000:]
    assert len(assert_consistent(Output(str(out)))) == 3
