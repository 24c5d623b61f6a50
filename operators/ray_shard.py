"""Run one shard on Ray: in the task's own process (local Ray, or ``ray_address`` / ``RAY_ADDRESS``), or
as a Ray Job on a remote cluster (KubeRay) when ``ray_conn_id`` names its dashboard, so the Airflow
worker then needs neither torch nor a GPU."""
from __future__ import annotations

import hashlib
import json
import logging
import shlex
import time
from typing import Any

from airflow.sdk import BaseOperator

from operators.common import as_dict, or_none, resolve_storage_options

log = logging.getLogger(__name__)

DEFAULT_DASHBOARD_PORT = 8265


def submission_id(dag_id: str, run_id: str, task_id: str, map_index: int, try_number: int) -> str:
    """The same task try always names the same Ray job, so a restarted worker finds its job again
    instead of submitting a second one; a retry (next try) submits afresh."""
    digest = hashlib.sha256(f"{dag_id}|{run_id}|{task_id}|{map_index}".encode()).hexdigest()[:16]
    return f"reelscope-{digest}-{map_index}-try{try_number}"


def dashboard_address(host: str, port: int | None, schema: str | None) -> str:
    if "://" in host:
        return host if port is None else f"{host.rstrip('/')}:{port}"
    return f"{schema or 'http'}://{host}:{port or DEFAULT_DASHBOARD_PORT}"


class RayShardOperator(BaseOperator):
    """Calls ``pipeline.orchestrate.run_shard`` on one shard plan; returns its counts.

    ``ray_conn_id`` (optional) names a connection to a Ray dashboard (host, port, schema): the shard then
    runs as a Ray Job (``python -m pipeline.orchestrate run-shard``) with a deterministic submission id,
    polled (every 0.5 s at first, backing off to every ``poll_interval`` seconds, so a short shard is not
    held back by the poll) and stopped when the task is killed. Credentials are not sent
    with the job; the cluster's own environment supplies them.
    """

    template_fields = (
        "shard_uri", "storage_options", "aws_conn_id", "ray_address", "ray_conn_id", "cache_dir", "runtime_env",
    )
    ui_color = "#fff4e5"

    def __init__(
        self,
        *,
        shard_uri: str,
        storage_options: Any = None,
        aws_conn_id: str | None = None,
        ray_address: str | None = None,
        ray_conn_id: str | None = None,
        cache_dir: str | None = None,
        runtime_env: Any = None,
        poll_interval: float = 10.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.shard_uri, self.storage_options, self.aws_conn_id = shard_uri, storage_options, aws_conn_id
        self.ray_address, self.ray_conn_id, self.cache_dir = ray_address, ray_conn_id, cache_dir
        self.runtime_env, self.poll_interval = runtime_env, poll_interval
        self._client = None
        self._job_id: str | None = None

    def execute(self, context) -> dict:
        opts = resolve_storage_options(self.aws_conn_id, self.storage_options)
        if or_none(self.ray_conn_id):
            return self._run_as_job(context, opts)
        from pipeline.orchestrate import run_shard

        return run_shard(str(self.shard_uri), opts, or_none(self.ray_address), or_none(self.cache_dir))

    def _jobs_client(self):
        from airflow.sdk import BaseHook
        from ray.job_submission import JobSubmissionClient

        conn = BaseHook.get_connection(self.ray_conn_id)
        return JobSubmissionClient(dashboard_address(conn.host, conn.port, conn.schema))

    def _run_as_job(self, context, opts: dict) -> dict:
        from ray.job_submission import JobStatus

        from pipeline.orchestrate import result_path, without_secrets
        from pipeline.store import open_output
        from schemas.run import ShardResult

        ti = context["ti"]
        self._client = self._jobs_client()
        self._job_id = submission_id(ti.dag_id, ti.run_id, ti.task_id, ti.map_index, ti.try_number)
        try:
            status = self._client.get_job_status(self._job_id)
            log.info("attaching to Ray job %s (%s)", self._job_id, status)
        except RuntimeError:  # no such job yet: the normal case
            entrypoint = " ".join(
                ["python -m pipeline.orchestrate run-shard", shlex.quote(str(self.shard_uri)),
                 "--storage-options", shlex.quote(json.dumps(without_secrets(opts)))]
                + (["--cache-dir", shlex.quote(self.cache_dir)] if or_none(self.cache_dir) else [])
            )
            self._client.submit_job(
                entrypoint=entrypoint, submission_id=self._job_id, runtime_env=as_dict(self.runtime_env) or None
            )
            log.info("submitted Ray job %s: %s", self._job_id, entrypoint)
            status = JobStatus.PENDING
        wait = 0.5
        while not status.is_terminal():
            time.sleep(min(wait, self.poll_interval))
            wait *= 2
            status = self._client.get_job_status(self._job_id)
        if status != JobStatus.SUCCEEDED:
            tail = self._client.get_job_logs(self._job_id)[-4000:]
            raise RuntimeError(f"Ray job {self._job_id} ended {status}; last log lines:\n{tail}")
        fs, path = open_output(result_path(str(self.shard_uri)), opts)
        return ShardResult.from_json(fs.cat_file(path)).counts()  # failures stay in the file; XCom: counts

    def on_kill(self) -> None:
        if self._client is not None and self._job_id is not None:
            log.info("stopping Ray job %s", self._job_id)
            self._client.stop_job(self._job_id)
