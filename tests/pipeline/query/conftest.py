"""Fixtures over a hand-built archive (see query_helpers) and over a real tiny-profile run."""
from __future__ import annotations

import pytest

from pipeline.query import open_snapshot
from pipeline.query.sql import connect
from pipeline.store import Output
from query_helpers import write_archive


@pytest.fixture(scope="session")
def archive(tmp_path_factory) -> str:
    """A local output holding two committed shards: street + a failed video, and kitchen."""
    root = tmp_path_factory.mktemp("archive") / "tables"
    write_archive(Output(str(root)))
    return str(root)


@pytest.fixture
def con(archive):
    with connect(open_snapshot(archive)) as c:
        yield c


@pytest.fixture(scope="session")
def tiny_output(tmp_path_factory, ray_session, model_cache) -> str:
    """The sample videos run once through the whole pipeline on the tiny profile."""
    from pipeline.config import load_config
    from pipeline.media.synth import write_samples
    from pipeline.run import run

    base = tmp_path_factory.mktemp("tiny")
    write_samples(base / "media")
    summary = run(load_config(str(base / "media"), str(base / "tables"), "tiny", cache_dir=model_cache))
    assert summary.ok and summary.keyframes, summary.failures
    return str(base / "tables")


@pytest.fixture
def reelscope(cli_run):
    """Run the real ``reelscope`` entry point in-process: (exit code, stdout, stderr unwrapped)."""

    def run(*args):
        code, out, err = cli_run(*args)
        return code, out, " ".join(err.split())

    return run
