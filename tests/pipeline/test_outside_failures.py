"""Failures outside reelscope end a command with one line that names the thing and what to do (exit 2),
and a run stopped by SIGTERM or Ctrl-C says how far it got (exit 143 / 130): real subprocesses, a real S3
(moto), a closed port, a socket that never answers, a full tmpfs, real signals."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from pipeline.media.synth import make_video
from pipeline.store import Output, open_snapshot, read_commits

NO_AWS = {"AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "AWS_CONFIG_FILE": "/nonexistent",
          "AWS_EC2_METADATA_DISABLED": "true"}


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return {**env, **NO_AWS, **extra}


def _reelscope(*args, env: dict, timeout: float = 120) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)
    return done, time.monotonic() - start


def _one_line(done: subprocess.CompletedProcess, code: int = 2) -> str:
    """The one line the failure is told in: the last one, and the only one from reelscope itself (a run's
    progress lines may come before it)."""
    told = [line for line in done.stderr.splitlines() if line.startswith("reelscope:")]
    assert done.returncode == code and len(told) == 1, done.stderr
    assert done.stderr.strip().splitlines()[-1] == told[0] and "Traceback" not in done.stderr, done.stderr
    return told[0]


def _config(tmp_path, **storage_options) -> str:
    path = tmp_path / "reelscope.yaml"
    path.write_text(json.dumps({"storage_options": storage_options}))
    return str(path)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("command", [["run", "s3://{bucket}/in/", "--output", "s3://{bucket}/out"],
                                     ["digest", "--output", "s3://{bucket}/out"]])
def test_s3_without_credentials(s3, tmp_path, command):
    bucket, opts = s3
    config = _config(tmp_path, client_kwargs=opts["client_kwargs"])
    done, _ = _reelscope(*[a.format(bucket=bucket) for a in command], "--config", config, env=_env())
    assert "no S3 credentials: set AWS_ACCESS_KEY_ID" in _one_line(done)


def test_s3_endpoint_gone(tmp_path):
    port = _port()  # nothing listens there
    config = _config(tmp_path, key="k", secret="s", client_kwargs={"endpoint_url": f"http://127.0.0.1:{port}"})
    done, seconds = _reelscope("run", "s3://lake/in/", "--output", "s3://lake/out", "--config", config, env=_env())
    assert f"cannot connect to S3 at http://127.0.0.1:{port}: start it" in _one_line(done)
    assert seconds < 30


def test_stalled_s3_fails_within_its_bound(tmp_path):
    with socket.socket() as stalled:  # the kernel accepts connections; nothing ever answers
        stalled.bind(("127.0.0.1", 0))
        stalled.listen(64)
        endpoint = f"http://127.0.0.1:{stalled.getsockname()[1]}"
        # 1 s reads, the user's own setting; the other limits stay the defaults (one botocore attempt).
        config = _config(tmp_path, key="k", secret="s", client_kwargs={"endpoint_url": endpoint},
                         config_kwargs={"read_timeout": 1})
        done, seconds = _reelscope("sql", "SELECT 1", "--output", "s3://lake/out", "--config", config, env=_env())
    assert f"S3 at {endpoint} did not answer in time" in _one_line(done)
    assert seconds < 5 * 1 + 1 + 10  # s3fs's 5 tries of 1 s, its back-off, and starting Python


def test_missing_bucket(s3, tmp_path):
    _, opts = s3
    config = _config(tmp_path, **opts)
    done, _ = _reelscope("digest", "--output", "s3://no-such-bucket/out", "--config", config, env=_env())
    assert _one_line(done) == "reelscope: error: output s3://no-such-bucket/out does not exist"
    done, _ = _reelscope("run", "s3://no-such-bucket/in/", "--output", tmp_path / "out", "--config", config, env=_env())
    assert _one_line(done) == "reelscope: error: input not found: s3://no-such-bucket/in/"


def test_hub_unreachable_is_one_line_before_any_model_loads(tmp_path):
    make_video(tmp_path / "media" / "a.mp4", [("red", 0.5)])
    (tmp_path / "c.yaml").write_text("models:\n  embedding: {ref: org/model}\n")
    port = _port()
    env = _env(HF_ENDPOINT=f"http://127.0.0.1:{port}", HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="0")
    done, seconds = _reelscope("run", tmp_path / "media", "--output", tmp_path / "out", "--config", tmp_path / "c.yaml",
                               env=env)
    line = _one_line(done)
    assert "the embedding model 'org/model' is not in the cache and the model hub at" in line
    assert f"127.0.0.1:{port} cannot be reached" in line and seconds < 30


def test_disk_full_while_writing_the_tables(tmp_path, model_cache):
    """A 16 KiB tmpfs (a mount namespace of its own): the write check fits, the shard's files do not."""
    make_video(tmp_path / "media" / "a.mp4", [("red", 1.0), ("blue", 1.0)], tone_hz=440.0)
    full = tmp_path / "full"
    full.mkdir()
    script = (f"mount -t tmpfs -o size=16k tmpfs {full} && exec {sys.executable} -m pipeline.cli run "
              f"{tmp_path / 'media'} --output {full / 'out'}")
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=300,
                          env=_env(REELSCOPE_CACHE=model_cache))
    line = _one_line(done)
    assert line.startswith("reelscope: error: disk full") and "free some space" in line, done.stderr


def _run_until(tmp_path, model_cache, marker: str, sig: int) -> tuple[subprocess.Popen, str]:
    """``reelscope run`` on six one-video shards, sent ``sig`` once its progress prints ``marker`` (the
first shard's commit leaves five under way)."""
    for n, colour in enumerate(("red", "lime", "blue", "yellow", "purple", "teal")):
        make_video(tmp_path / "media" / f"{n}.mp4", [(colour, 0.5)])
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "run", tmp_path / "media", "--output", tmp_path / "out", "--shard-size", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(REELSCOPE_CACHE=model_cache),
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    deadline = time.monotonic() + 240
    while not any(marker in line for line in lines) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(sig)
    proc.wait(timeout=120)
    reader.join(timeout=10)
    return proc, "".join(lines)


@pytest.mark.parametrize("sig, marker, code", [(signal.SIGTERM, ": committed", 143), (signal.SIGINT, "loading models", 130)])
def test_signals_stop_a_run_cleanly(tmp_path, model_cache, sig, marker, code):
    proc, stderr = _run_until(tmp_path, model_cache, marker, sig)
    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr and "Aborted" not in stderr and "core dumped" not in stderr, stderr
    last = stderr.strip().splitlines()[-1]
    committed = read_commits(Output(str(tmp_path / "out"))) if (tmp_path / "out").exists() else []
    assert last == f"reelscope: interrupted: {len(committed)} shards committed, rerun to continue", stderr
    if committed:  # what is committed is whole: every shard's videos row is there
        assert open_snapshot(str(tmp_path / "out")).read("videos").num_rows == sum(c.rows["videos"] for c in committed)
