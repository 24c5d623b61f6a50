"""Fixtures of the store tests: an output on a local disk or on the loopback S3 (moto), and committer
processes (``committer.py``) that the fault tests run, kill, stop and resume."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

from pipeline.store import Output

ROOT = Path(__file__).resolve().parents[3]
COMMITTER = Path(__file__).with_name("committer.py")


@pytest.fixture(params=["local", "s3"])
def where(request) -> str:
    return request.param


@pytest.fixture
def make_output(where, tmp_path, request) -> Callable[..., Output]:
    """``make_output(name="out", partition=None) -> Output`` on the place ``where`` names."""
    if where == "s3":
        bucket, opts = request.getfixturevalue("s3")
        return lambda name="out", partition=None: Output(f"s3://{bucket}/{name}", opts, partition)
    return lambda name="out", partition=None: Output(str(tmp_path / name), None, partition)


class Committer:
    """One committer process: stdout (JSON events) and stderr go to files, read back at any time (also after
    a SIGKILL: a line is there only once what it names was committed)."""

    def __init__(self, folder: Path, name: str, output: Output, ids: list[str], *args: str) -> None:
        self.stdout_path, self.stderr_path = folder / f"{name}.out", folder / f"{name}.err"
        cmd = [sys.executable, str(COMMITTER), output.uri, "--ids", ",".join(ids),
               "--storage-options", json.dumps(dict(output.storage_options or {}))]
        if output.partition:
            cmd += ["--partition", output.partition]
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen([*cmd, *args], cwd=ROOT, stdout=out, stderr=err)

    @property
    def events(self) -> list[dict]:
        lines = self.stdout_path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.endswith("}")]  # a killed writer may leave half a line

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def committed(self) -> set[str]:
        """The videos of every shard this process reported committed."""
        return {i for e in self.events if e["event"] == "committed" for i in e["ids"]}

    def wait_for(self, event: str, timeout: float = 60.0, poll: float = 0.01) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [e for e in self.events if e["event"] == event]
            if found:
                return found[-1]
            if self.proc.poll() is not None:
                raise AssertionError(f"committer ended ({self.proc.returncode}) before {event}: {self.stderr[-2000:]}")
            time.sleep(poll)
        self.kill()
        raise AssertionError(f"no {event} from the committer within {timeout} s: {self.stderr[-2000:]}")

    def finish(self, timeout: float = 120.0) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"committer still running after {timeout} s: {self.stderr[-2000:]}") from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)


@pytest.fixture
def committer(tmp_path) -> Callable[..., Committer]:
    """``committer(name, output, ids, *args) -> Committer`` (args: see committer.py); every process left
    running at the end of the test is killed."""
    started: list[Committer] = []
    folder = tmp_path / "committers"
    folder.mkdir(exist_ok=True)

    def start(name: str, output: Output, ids: list[str], *args: str) -> Committer:
        c = Committer(folder, name, output, list(ids), *args)
        started.append(c)
        return c

    yield start
    for c in started:
        if c.proc.poll() is None:
            try:
                c.signal(signal.SIGCONT)
            except ProcessLookupError:
                pass
            c.kill()
