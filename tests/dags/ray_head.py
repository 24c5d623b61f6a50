"""A Ray head of the tests' own, with its dashboard (the Ray Jobs API), started once per session on loopback.

``ray start --head --block`` runs in a new process group, so that stopping it stops this head and nothing
else (not the session's in-process Ray, nor anyone else's). Its environment has no ``AWS_*`` variables: a
job that reaches S3 does so with the credentials it was sent. With a Ray token (``~/.ray/auth_token``) the
head, its jobs and the job clients all use token authentication.
"""
from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

TOKEN = Path.home() / ".ray" / "auth_token"
_head: RayHead | None = None


@dataclass(frozen=True)
class RayHead:
    address: str  # the dashboard's, for Ray Jobs
    gcs_address: str
    process: subprocess.Popen


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def auth_env() -> dict[str, str]:
    """What a Ray process or job client needs in its environment to talk to this head."""
    return {"RAY_AUTH_MODE": "token"} if TOKEN.exists() else {}


def shared_head(model_cache: str) -> RayHead:
    """The session's head (started on first use, stopped when the session's process exits); its jobs build
    and find the tiny models in ``model_cache``."""
    global _head
    if _head is None:
        _head = _start(model_cache)
        atexit.register(_stop, _head.process)
    return _head


def _start(model_cache: str) -> RayHead:
    # Every fixed default port (the agent's 52365, the client server's 10001) free, as other Rays may run here.
    port, dashboard, agent, client, metrics = (_port() for _ in range(5))
    tmp = tempfile.mkdtemp(prefix="rh")  # short: Ray's socket paths live under it
    bin_dir = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_ADDRESS"))}
    env.update(PATH=f"{bin_dir}:{env['PATH']}", REELSCOPE_CACHE=model_cache, **auth_env())
    log = open(f"{tmp}/head.log", "wb")
    head = subprocess.Popen(
        [f"{bin_dir}/ray", "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
         f"--dashboard-agent-listen-port={agent}", f"--ray-client-server-port={client}",
         f"--metrics-export-port={metrics}",
         "--num-cpus=2", "--object-store-memory=500000000", f"--temp-dir={tmp}", "--disable-usage-stats"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    log.close()
    address = f"http://127.0.0.1:{dashboard}"
    os.environ.update(auth_env())  # this process's job clients
    deadline = time.monotonic() + 180
    while True:  # up once its job agent takes a job (the dashboard answers before)
        try:
            from ray.job_submission import JobSubmissionClient

            client = JobSubmissionClient(address)
            client.submit_job(entrypoint="true")
            return RayHead(address, f"127.0.0.1:{port}", head)
        except (OSError, RuntimeError) as exc:
            if time.monotonic() > deadline or head.poll() is not None:
                _stop(head)
                tail = Path(f"{tmp}/head.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"the test Ray head did not start: {exc}\n{tail}") from None
            time.sleep(1)


def _stop(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
