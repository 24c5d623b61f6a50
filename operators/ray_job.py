"""A planned run as one Ray Job: its submission (id, entrypoint, runtime environment) and the trigger that
waits for it in Airflow's triggerer, so that no worker slot is held while it runs.

The cluster is an Airflow connection to its dashboard (host, port, schema), whose password, when set, is the
cluster's Ray auth token (sent as ``Authorization: Bearer``; without it, Ray's own token file and
``RAY_AUTH_MODE`` apply). Ray is imported where a job is submitted or polled, never when a DAG file is parsed.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import shlex
import time
from typing import Any, AsyncIterator, Mapping

from airflow.triggers.base import BaseTrigger, TriggerEvent

DEFAULT_DASHBOARD_PORT = 8265
# Consecutive failed polls (the dashboard restarting, a network blip) before the trigger gives up.
MAX_POLL_ERRORS = 10


def submission_id(dag_id: str, run_id: str, task_id: str, map_index: int, try_number: int) -> str:
    """The same task try always names the same Ray job, so a restarted worker finds its job again
    instead of submitting a second one; a retry (next try) submits afresh."""
    digest = hashlib.sha256(f"{dag_id}|{run_id}|{task_id}|{map_index}".encode()).hexdigest()[:16]
    return f"reelscope-{digest}-{map_index}-try{try_number}"


def dashboard_address(host: str, port: int | None, schema: str | None) -> str:
    if "://" in host:
        return host if port is None else f"{host.rstrip('/')}:{port}"
    return f"{schema or 'http'}://{host}:{port or DEFAULT_DASHBOARD_PORT}"


def job_request(
    plan_uri: str, storage_options: Mapping[str, Any], cache_dir: str | None = None,
    runtime_env: Mapping[str, Any] | None = None,
) -> tuple[str, dict]:
    """The entrypoint and runtime environment of the job that runs ``plan_uri``.

    The entrypoint (shown by the dashboard and in logs) carries the storage options without credentials;
    the AWS credentials among them travel as the ``AWS_*`` variables of the runtime environment
    (``pipeline.orchestrate.storage.split_secrets``), over those ``runtime_env`` sets. Without any, the
    cluster's own environment (instance roles, IRSA, its ``AWS_*`` variables) supplies them.
    """
    from pipeline.orchestrate.storage import split_secrets

    shown, credentials = split_secrets(storage_options)
    entrypoint = " ".join(
        ["python -m pipeline.orchestrate run-plan", shlex.quote(plan_uri),
         "--storage-options", shlex.quote(json.dumps(shown))]
        + (["--cache-dir", shlex.quote(cache_dir)] if cache_dir else [])
    )
    env = dict(runtime_env or {})
    if credentials:
        env["env_vars"] = {**env.get("env_vars", {}), **credentials}
    return entrypoint, env


def jobs_client(conn):
    """A job client for the cluster of the Airflow connection ``conn``."""
    from ray.job_submission import JobSubmissionClient

    headers = {"Authorization": f"Bearer {conn.password}"} if conn.password else None
    return JobSubmissionClient(dashboard_address(conn.host, conn.port, conn.schema), headers=headers)


def log_tail(client, job_id: str, lines: int = 40) -> str:
    """The last ``lines`` lines the job's driver wrote, or why they cannot be read."""
    try:
        return "\n".join(client.get_job_logs(job_id).splitlines()[-lines:])
    except (OSError, RuntimeError) as exc:
        return f"(its logs could not be read: {exc})"


class RayJobTrigger(BaseTrigger):
    """Polls the Ray job ``submission_id`` on the cluster of ``ray_conn_id`` (every 0.5 s at first, backing off
    to every ``poll_interval`` seconds, so a short job is not held back by the poll) and fires one event,
    ``{"submission_id", "status", "message"}``, once it has ended: ``SUCCEEDED``, ``FAILED`` or
    ``STOPPED`` as Ray says, ``TIMEOUT`` after stopping a job still running at ``deadline`` (epoch
    seconds), ``UNREACHABLE`` when the dashboard did not answer ``MAX_POLL_ERRORS`` polls in a row.
    A user killing the deferred task (mark failed, clear) stops the job."""

    def __init__(self, ray_conn_id: str, submission_id: str, poll_interval: float = 10.0,
                 deadline: float | None = None) -> None:
        super().__init__()
        self.ray_conn_id, self.submission_id = ray_conn_id, submission_id
        self.poll_interval, self.deadline = poll_interval, deadline
        self._conn = self._client = None

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return f"{type(self).__module__}.{type(self).__qualname__}", {
            "ray_conn_id": self.ray_conn_id, "submission_id": self.submission_id, "poll_interval": self.poll_interval,
            "deadline": self.deadline,
        }

    async def run(self) -> AsyncIterator[TriggerEvent]:
        wait, errors = min(0.5, self.poll_interval), 0
        await self._connect()
        while True:
            try:
                status = await asyncio.to_thread(self._status)
                errors = 0
            except (OSError, RuntimeError) as exc:  # the job client's HTTP and "no such job" errors
                errors += 1
                if errors >= MAX_POLL_ERRORS:
                    yield self._event("UNREACHABLE", f"{errors} polls failed, the last with: {exc}")
                    return
                status = None
            if status is not None and status.is_terminal():
                yield self._event(status.value)
                return
            if self.deadline is not None and time.time() >= self.deadline:
                await asyncio.to_thread(self._stop)
                yield self._event("TIMEOUT", "stopped at the task's execution timeout")
                return
            await asyncio.sleep(wait)
            wait = min(wait * 2, self.poll_interval)

    async def on_kill(self) -> None:
        await self._connect()
        await asyncio.to_thread(self._stop)

    async def _connect(self) -> None:
        """The connection read here, in the triggerer: its token never travels in the trigger's arguments."""
        from airflow.sdk import BaseHook

        if self._conn is None:
            self._conn = await BaseHook.aget_connection(self.ray_conn_id)

    def _jobs(self):
        if self._client is None:  # made in a thread: the client asks the dashboard for its version
            self._client = jobs_client(self._conn)
        return self._client

    def _status(self):
        return self._jobs().get_job_status(self.submission_id)

    def _stop(self) -> None:
        self.log.info("stopping Ray job %s", self.submission_id)
        self._jobs().stop_job(self.submission_id)

    def _event(self, status: str, message: str = "") -> TriggerEvent:
        return TriggerEvent({"submission_id": self.submission_id, "status": status, "message": message})
