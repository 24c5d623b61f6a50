"""Run a whole planned run: as one Ray Job on a cluster, deferred while it runs, or in the task's own process."""
from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any, NoReturn

from airflow.sdk import BaseOperator

from operators.common import as_dict, or_none, resolve_storage_options

log = logging.getLogger(__name__)


class RunPlanOperator(BaseOperator):
    """Calls ``pipeline.orchestrate.run_plan`` on the plan ``plan_uri``: every shard in one pipeline.

    With ``ray_conn_id`` (a connection to a Ray dashboard: host, port, schema; its password, if set, the
    cluster's Ray auth token) the run is one Ray Job, ``python -m pipeline.orchestrate run-plan``, submitted
    under an id derived from the DAG run, task and try (a restarted worker attaches to its job instead of
    submitting another); the task then defers to
    ``RayJobTrigger`` and holds no worker slot until the job ends. The job's storage options travel without
    credentials in its entrypoint, the credentials as ``AWS_*`` variables of its runtime environment
    (``runtime_env`` adds to it). A retry submits a new job, which skips the shards the run committed. Killing
    the task stops the job. Without ``ray_conn_id`` the run happens in the task's process (local Ray, or
    ``ray_address`` / ``RAY_ADDRESS``), so the worker then needs the models' dependencies and any GPU.

    Either way the task logs a table of each shard's outcome, pushes them under the XCom key ``shards`` and
    returns the run's counts.
    """

    template_fields = (
        "plan_uri", "storage_options", "aws_conn_id", "ray_address", "ray_conn_id", "cache_dir", "runtime_env",
    )
    ui_color = "#fff4e5"

    def __init__(
        self,
        *,
        plan_uri: Any,
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
        self.plan_uri, self.storage_options, self.aws_conn_id = plan_uri, storage_options, aws_conn_id
        self.ray_address, self.ray_conn_id, self.cache_dir = ray_address, ray_conn_id, cache_dir
        self.runtime_env, self.poll_interval = runtime_env, poll_interval
        self._job: tuple | None = None  # (job client, submission id) once submitted
        self._lineage: tuple | None = None  # (plan, result) of the run, for OpenLineage

    def execute(self, context) -> dict:
        from pipeline.orchestrate import run_plan

        opts = resolve_storage_options(self.aws_conn_id, self.storage_options)
        plan = self._plan(opts)
        if or_none(self.ray_conn_id) and plan.shards:
            self._submit(context, opts)
        # In this process; also a plan without shards, which runs no pipeline and needs no cluster.
        result = run_plan(str(self.plan_uri), opts, or_none(self.ray_address), or_none(self.cache_dir))
        return self._report(context, plan, result)

    def execute_complete(self, context, event: dict) -> dict:
        """Resumed by the trigger once the job has ended: the run's outcome, or the job's last log lines."""
        from operators.ray_job import log_tail
        from pipeline.orchestrate import read_record, run_result_path
        from schemas.run import RunResult

        job_id, status = event["submission_id"], event["status"]
        if status != "SUCCEEDED":
            why = f" ({event['message']})" if event.get("message") else ""
            raise RuntimeError(f"Ray job {job_id} ended {status}{why}; its last log lines:\n"
                               f"{log_tail(self._jobs(), job_id)}")
        log.info("Ray job %s succeeded", job_id)
        opts = resolve_storage_options(self.aws_conn_id, self.storage_options)
        result = read_record(run_result_path(str(self.plan_uri)), RunResult, opts)
        return self._report(context, self._plan(opts), result.to_dict())

    def on_kill(self) -> None:
        """Stops a job this try submitted before it deferred (once deferred, the trigger stops it)."""
        if self._job is not None:
            client, job_id = self._job
            log.info("stopping Ray job %s", job_id)
            client.stop_job(job_id)

    def get_openlineage_facets_on_complete(self, task_instance):
        from operators.lineage import run_lineage

        plan, result = self._lineage
        return run_lineage(plan.input_uri, result["tables"], result["versions"], plan.config.get("models", {}),
                           plan.profile, plan.config_fingerprint)

    def _jobs(self):
        from airflow.sdk import BaseHook

        from operators.ray_job import jobs_client

        return jobs_client(BaseHook.get_connection(self.ray_conn_id))

    def _plan(self, opts: dict):
        from pipeline.orchestrate import read_record
        from schemas.run import RunPlan

        return read_record(str(self.plan_uri), RunPlan, opts)

    def _submit(self, context, opts: dict) -> NoReturn:
        from operators.ray_job import RayJobTrigger, job_request, submission_id

        ti = context["ti"]
        job_id = submission_id(ti.dag_id, ti.run_id, ti.task_id, ti.map_index, ti.try_number)
        client = self._jobs()
        self._job = (client, job_id)
        try:
            log.info("attaching to Ray job %s (%s)", job_id, client.get_job_status(job_id))
        except RuntimeError:  # no such job yet: the normal case
            entrypoint, runtime_env = job_request(str(self.plan_uri), opts, or_none(self.cache_dir),
                                                  as_dict(self.runtime_env))
            client.submit_job(entrypoint=entrypoint, submission_id=job_id, runtime_env=runtime_env or None)
            log.info("submitted Ray job %s to %s: %s", job_id, self.ray_conn_id, entrypoint)
        # Airflow's execution timeout does not reach a deferred task: the trigger stops the job at it.
        deadline = time.time() + self.execution_timeout.total_seconds() if self.execution_timeout else None
        self.defer(trigger=RayJobTrigger(str(self.ray_conn_id), job_id, self.poll_interval, deadline),
                   method_name="execute_complete")

    def _report(self, context, plan, result: dict) -> dict:
        from pipeline.orchestrate import outcome_table

        self._lineage = (plan, result)
        log.info("run %s, by shard:\n%s", plan.run_id, outcome_table(result["shards"]))
        context["ti"].xcom_push(key="shards", value=result["shards"])
        totals = result["totals"]
        log.info("%d shard(s) committed, %d video(s) ok, %d failed, %d committed before, in %s",
                 totals["shards"], totals["ok"], totals["failed"], totals["skipped"],
                 dt.timedelta(seconds=round(totals["wall_s"])))
        return totals
