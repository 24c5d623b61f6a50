"""The session's real two-node Ray cluster on loopback (``ray_jobs``: tests/ray_jobs.py, tests/cluster.py): a
head and a worker that declares 2 GPUs (so GPU scheduling is exercised; torch finds none there, and the
actors say so and run on CPU), each with its own temp dir and model cache; S3 is moto's server. The runs go
through the CLI in a driver subprocess (the archive DAG's run on the same cluster, as one Ray Job:
tests/dags/test_dag_runs.py::test_archive_as_one_ray_job).

- work runs on both nodes (decodes on either, the model pools on the GPU node), one ``videos`` row per input;
- the worker node is killed mid-run: the run says so in one line, goes on with what is left (on CPU, the
  last GPU gone), and completes with every video accounted for, each once.
"""
from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.ray_jobs import replace_worker

VIDEOS = 8


@pytest.fixture
def media(s3, tmp_path):
    """VIDEOS short videos with known scenes and a tone, on S3."""
    import s3fs

    from pipeline.media.synth import make_video

    bucket, opts = s3
    fs = s3fs.S3FileSystem(**opts)
    colours = ["red", "green", "blue", "yellow", "white", "magenta", "cyan", "gray"]
    for n in range(VIDEOS):
        path = tmp_path / f"v{n}.mp4"
        make_video(path, [(colours[n % len(colours)], 1.0), (colours[(n + 3) % len(colours)], 1.0)], tone_hz=330.0 + 40 * n)
        fs.put(str(path), f"{bucket}/media/v{n}.mp4")
    return bucket, opts


def _cli(cluster, s3_endpoint: str, bucket: str, out: str, cache: Path) -> subprocess.Popen:
    env = cluster.env(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL=s3_endpoint, REELSCOPE_CACHE=str(cache), PYTHONUNBUFFERED="1")
    args = [str(Path(sys.executable).with_name("reelscope")), "run", f"s3://{bucket}/media/", "--output",
            f"s3://{bucket}/{out}/", "--shard-size", "1", "--ray-address", cluster.address]
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _videos(bucket: str, out: str, opts: dict) -> list[dict]:
    from pipeline.store import open_snapshot

    return open_snapshot(f"s3://{bucket}/{out}", opts).read("videos").to_pylist()


def test_a_run_fills_both_nodes_and_survives_losing_one(ray_jobs, media, s3_endpoint, tmp_path):
    cluster = ray_jobs
    bucket, opts = media
    run = _cli(cluster, s3_endpoint, bucket, "whole", tmp_path / "driver-cache")
    text, _ = run.communicate(timeout=600)
    assert run.returncode == 0, text[-4000:]
    assert re.search(r"Ray nodes that did work\W+2\b", text), text[-3000:]
    assert "torch sees no usable CUDA device; running it on CPU" in text  # the declared GPUs, placed and found empty
    rows = _videos(bucket, "whole", opts)
    assert sorted(r["uri"] for r in rows) == sorted(f"s3://{bucket}/media/v{n}.mp4" for n in range(VIDEOS))
    assert all(r["status"] == "ok" for r in rows), [r["error"] for r in rows]

    # Again into another output, and the worker node (the only one with GPUs, so where the model actors are)
    # goes as soon as its transcriber has videos.
    run = _cli(cluster, s3_endpoint, bucket, "survivor", tmp_path / "driver-cache")
    lines = []
    for line in run.stdout:
        lines.append(line)
        if line.rstrip().endswith(": asr"):
            break
    cluster.kill_node(cluster.worker)
    cluster.wait_node(cluster.worker, alive=False)
    try:
        rest, _ = run.communicate(timeout=600)
    finally:
        replace_worker(cluster)  # for the session's next users of the cluster
    text = "".join(lines) + rest
    assert run.returncode == 0, text[-4000:]
    lost = [line for line in text.splitlines() if re.search(r"node \w+ lost: \d+ video\(s\) in work there go again", line)]
    assert len(lost) == 1, text[-4000:]
    assert "no GPU left in the cluster: new model actors run on cpu" in text
    rows = _videos(bucket, "survivor", opts)
    assert sorted(r["uri"] for r in rows) == sorted(f"s3://{bucket}/media/v{n}.mp4" for n in range(VIDEOS))
    assert all(r["status"] == "ok" for r in rows), [r["error"] for r in rows]
