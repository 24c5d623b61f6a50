"""The command line: one-line errors for bad arguments, a summary table for a real run, a digest."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from pipeline.cli import app


def _reelscope(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True, timeout=120,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "{tmp}/missing", "--output", "{tmp}/out"], "input not found"),
        (["run", "{tmp}", "--output", "{tmp}/out", "--profile", "huge"], "unknown profile 'huge'"),
        (["run", "{tmp}", "--output", "{tmp}/afile/out"], "not writable"),
        (["run", "{tmp}", "--output", "{tmp}/out", "--config", "{tmp}/nope.yaml"], "config file not found"),
        (["run", "{tmp}", "--output", "{tmp}/out", "--shard-size", "0"], "shard_size must be >= 1"),
        (["run", "{tmp}"], "Missing option '--output'"),
        (["digest", "--output", "{tmp}"], "no reelscope tables"),
    ],
)
def test_bad_arguments_get_one_line(tmp_path, args, message):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "a.mp4").write_bytes(b"")
    result = _reelscope(*[a.format(tmp=tmp_path) for a in args])
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("reelscope: error:"), result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.stderr


def test_sample_run_digest(tmp_path, ray_session, model_cache):
    media, out = tmp_path / "media", tmp_path / "tables"
    runner = CliRunner()
    result = runner.invoke(app, ["sample", str(media), "--broken"])
    assert result.exit_code == 0, result.output
    samples = sorted(p.name for p in media.iterdir())
    assert "broken.mp4" in samples and len(samples) >= 4
    env = {"REELSCOPE_CACHE": model_cache}
    result = runner.invoke(app, ["run", str(media), "--output", str(out)], env=env)
    assert result.exit_code == 0, result.output
    assert "processed ok" in result.output and f"{len(samples) - 1}" in result.output
    assert "failed: file://" in result.output and "broken.mp4: decode:" in result.output
    result = runner.invoke(app, ["digest", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "keyframes" in result.output and "broken.mp4" in result.output
    assert result.output.count("✓") == len(samples) - 1
    again = runner.invoke(app, ["run", str(media), "--output", str(out)], env=env)
    assert again.exit_code == 0, again.output
    skipped_line = next(line for line in again.output.splitlines() if "skipped (already done)" in line)
    assert skipped_line.split()[-2] == str(len(samples))
