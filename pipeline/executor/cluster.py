"""The cluster a run works on: joining one (or starting a local Ray), what it has, and what its workers are given.

Workers need nothing from the driver's machine: credentials reach them as environment variables of the
job's runtime environment (``ensure_ray(env_vars=...)``), never inside pickled stages; the media they read
must be on storage every node reaches (``check_reachable``); each node has its own model cache.
"""
from __future__ import annotations

import logging
import os
import re
import socket
import sys
import tempfile
from typing import Iterable, Mapping

from pipeline.config import ConfigError

log = logging.getLogger(__name__)

SHARED_FS_ENV = "REELSCOPE_SHARED_FS"  # "1": local paths are mounted at the same place on every node
CONNECT_TIMEOUT_S = 5.0  # how long a cluster's address may take to accept a connection
_JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # what Ray Jobs give their entrypoint: the job's settings

_env_vars: dict[str, str] = {}  # what this run's workers need in their environment (credentials)


class ClusterError(ConfigError):
    """The Ray cluster cannot be joined; the message is one line meant for the user."""



def ensure_ray(
    address: str | None = None, object_store_bytes: int = 2 * 1024**3, env_vars: Mapping[str, str] | None = None,
) -> None:
    """Join a cluster (``address`` or ``RAY_ADDRESS``) or start a local Ray, unless one is already up.

    ``env_vars`` (credentials: ``pipeline.orchestrate.storage.split_secrets``) become the job's runtime
    environment, so every task and actor of this process, on every node, has them. A Ray this process is
    connected to already keeps the environment it started with: ``worker_runtime_env`` then says what each
    task and actor must be given on its own.
    """
    import ray

    global _env_vars
    _env_vars = dict(env_vars or {})
    if ray.is_initialized():
        return
    runtime_env = _job_runtime_env(_env_vars)
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        _join(address, runtime_env)
    else:
        ray.init(
            num_cpus=os.cpu_count(),
            object_store_memory=object_store_bytes,
            include_dashboard=False,
            logging_level=logging.WARNING,
            runtime_env=runtime_env,
        )


def worker_runtime_env() -> dict | None:
    """The ``runtime_env`` option every task and actor of this run must be created with: the variables
    ``ensure_ray`` was given that the job's own runtime environment lacks or holds otherwise (a Ray started
    before them, another run's credentials), else None. Ray merges it into the job's, variable by variable."""
    import ray

    if not _env_vars:
        return None
    held = ray.get_runtime_context().runtime_env.get("env_vars") or {}
    missing = {k: v for k, v in _env_vars.items() if held.get(k) != v}
    return {"env_vars": missing} if missing else None


def check_reachable(input_uri: str, media: Iterable[str] = ()) -> None:
    """Refuse (``ConfigError``) media on this machine's disk when the cluster has other nodes, which cannot
    read it: a decode placed there would fail the video as "file not found". ``media``: the URIs listed from
    ``input_uri``, which decide when given (a manifest on the driver's disk may list S3 objects, one on S3
    local files); else the input itself. ``REELSCOPE_SHARED_FS=1`` says that local paths are mounted at the
    same place on every node."""
    import ray

    media = list(media)
    local = [u for u in media if _is_local(u)] if media else [input_uri] * _is_local(input_uri)
    if not local or os.environ.get(SHARED_FS_ENV, "").strip().lower() in ("1", "true", "yes"):
        return
    from ray.util.client import ray as client

    # Through Ray Client (ray://) the driver is no node at all: its node id is the head's.
    here = None if client.is_connected() else ray.get_runtime_context().get_node_id()
    others = [n for n in ray.nodes() if n.get("Alive") and n.get("NodeID") != here]
    if not others:
        return
    what = f"input {input_uri}" if _is_local(input_uri) else f"input {input_uri} lists {local[0]}, which"
    raise ConfigError(
        f"{what} is on this machine's disk, which the {'other ' if here else ''}{len(others)} node(s) of the "
        f"Ray cluster cannot read: put the media on an object store and give its URI (s3://bucket/prefix), or "
        f"set {SHARED_FS_ENV}=1 if the path is mounted at the same place on every node"
    )


def _is_local(uri: str) -> bool:
    from fsspec.utils import get_protocol

    return get_protocol(uri) in ("file", "local")


def _job_runtime_env(env_vars: dict[str, str]) -> dict | None:
    """The runtime environment for ``ray.init``. Inside a Ray Job, whose submitter may have given the same
    variables, Ray refuses a variable set by both: those are left to the job's (``worker_runtime_env`` gives
    tasks and actors any that differ)."""
    if _JOB_CONFIG_ENV in os.environ:
        import json

        job = (json.loads(os.environ[_JOB_CONFIG_ENV]).get("runtime_env") or {}).get("env_vars") or {}
        env_vars = {k: v for k, v in env_vars.items() if k not in job}
    return {"env_vars": env_vars} if env_vars else None


def _join(address: str, runtime_env: dict | None) -> None:
    """``ray.init`` on a cluster's address, or ``ClusterError`` in one line saying why it cannot be joined."""
    import ray

    _check_listening(address)
    with _StderrHeld() as held:
        try:
            ray.init(address=address, logging_level=logging.WARNING, runtime_env=runtime_env)
            return
        except Exception as exc:  # Ray reports a refused token and a wrong address alike: ConnectionError
            failure = exc
            held.drop()  # Ray's core logged each refused attempt there itself: the line below says it once
    # Ray's own words say what its exception does not: that the token was refused.
    text = f"{held.text}\n{failure}"
    if re.search(r"Unauthenticated|InvalidAuthToken|authentication token", text, re.IGNORECASE):
        raise ClusterError(
            f"the Ray cluster at {address} refused this process's authentication token: set RAY_AUTH_MODE=token "
            "and the cluster's token (RAY_AUTH_TOKEN, or the file ~/.ray/auth_token)"
        ) from None
    first = (str(failure).strip().splitlines() or [""])[0]
    raise ClusterError(
        f"cannot join the Ray cluster at {address}: {failure.__class__.__name__}: {first} (if it uses token "
        "authentication, set RAY_AUTH_MODE=token and its token)"
    ) from None


def _check_listening(address: str) -> None:
    """Ray retries an address that nothing listens on for many minutes: a closed port is told at once."""
    match = re.fullmatch(r"(?:[a-z]+://)?\[?([^\[\]/]+?)\]?:(\d+)/?", address.strip())
    if not match:  # "auto", "local": Ray finds the cluster itself
        return
    host, port = match.group(1), int(match.group(2))
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        reason = exc.strerror or exc.__class__.__name__
        raise ClusterError(
            f"cannot reach the Ray cluster at {address} ({reason.lower()}): start it (ray start --head), or "
            "give the address of one that runs with --ray-address or RAY_ADDRESS"
        ) from None


class _StderrHeld:
    """What is written to file descriptor 2 meanwhile (by C++ code too) is held back, and passed on to stderr
    at the end unless ``drop`` was called; ``text`` keeps it."""

    def __enter__(self) -> "_StderrHeld":
        sys.stderr.flush()
        self.text, self._dropped = "", False
        self._saved = os.dup(2)
        self._held = tempfile.TemporaryFile()
        os.dup2(self._held.fileno(), 2)
        return self

    def drop(self) -> None:
        self._dropped = True

    def __exit__(self, *exc_info) -> None:
        sys.stderr.flush()
        os.dup2(self._saved, 2)
        os.close(self._saved)
        with self._held:
            self._held.seek(0)
            self.text = self._held.read().decode(errors="replace")
        if self.text and not self._dropped:
            os.write(2, self.text.encode())
