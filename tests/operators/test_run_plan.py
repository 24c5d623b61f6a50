"""RunPlanOperator's Ray Jobs path, piece by piece, against a real Ray cluster with its dashboard and token
auth: the job it submits (and what never goes into it), the trigger that waits for it, and what the task does
when the job ends. tests/dags runs the whole of it in a DAG run."""
import asyncio
import json
import logging
import time
from types import SimpleNamespace

import pytest
from airflow.sdk.exceptions import TaskDeferred
from ray.job_submission import JobStatus, JobSubmissionClient

from operators import RunPlanOperator
from operators.ray_job import RayJobTrigger, dashboard_address, job_request, submission_id
from pipeline.orchestrate import list_and_shard
from tests.pipeline.test_secrets import SPELLINGS



def _context(try_number=1):
    pushed = {}
    ti = SimpleNamespace(dag_id="reelscope_archive", run_id="manual__2026-11-23", task_id="run_plan", map_index=-1,
                         try_number=try_number, xcom_push=lambda key, value: pushed.__setitem__(key, value))
    return {"ti": ti}, pushed


def _event(trigger):
    """What the triggerer does with a trigger: run it until its first event."""
    async def first():
        return await anext(trigger.run())

    return asyncio.run(first()).payload


def _wait_terminal(client, job_id, timeout=60):
    deadline = time.monotonic() + timeout
    while not (status := client.get_job_status(job_id)).is_terminal():
        assert time.monotonic() < deadline, status
        time.sleep(0.2)
    return status


@pytest.fixture
def jobs(ray_jobs, monkeypatch):
    """A job client of the session's cluster, which the connection ``ray_test`` names (token and all)."""
    from tests.ray_jobs import connection

    monkeypatch.setenv("AIRFLOW_CONN_RAY_TEST", connection(ray_jobs))
    return JobSubmissionClient(ray_jobs.dashboard_url, headers=ray_jobs.headers())


@pytest.fixture
def plan(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.mp4").write_bytes(b"not a video")
    return list_and_shard(str(tmp_path / "in"), str(tmp_path / "out"), "jobs")["plan"]


def test_submission_ids_are_deterministic_per_try():
    a = submission_id("d", "r", "t", -1, 1)
    assert a == submission_id("d", "r", "t", -1, 1)
    assert len({a, submission_id("d", "r", "t", 0, 1), submission_id("d", "r", "t", -1, 2)}) == 3


def test_dashboard_address():
    assert dashboard_address("ray-head", None, None) == "http://ray-head:8265"
    assert dashboard_address("ray-head", 8266, "https") == "https://ray-head:8266"
    assert dashboard_address("http://ray-head:8265", None, "") == "http://ray-head:8265"


def test_credentials_travel_in_the_runtime_env_and_never_in_the_entrypoint():
    entrypoint, env = job_request("s3://lake/_plans/r/plan.json", SPELLINGS, "/cache",
                                  {"env_vars": {"HF_HUB_OFFLINE": "1"}, "config": {"setup_timeout_seconds": 60}})
    assert entrypoint.startswith("python -m pipeline.orchestrate run-plan s3://lake/_plans/r/plan.json ")
    assert "minio:9000" in entrypoint and "--cache-dir /cache" in entrypoint and "S-" not in entrypoint
    assert env == {"env_vars": {"HF_HUB_OFFLINE": "1", "AWS_ACCESS_KEY_ID": "S-key",
                                "AWS_SECRET_ACCESS_KEY": "S-secret", "AWS_SESSION_TOKEN": "S-token"},
                   "config": {"setup_timeout_seconds": 60}}
    # No credentials given: the job gets none, and the cluster's own environment is left to supply them.
    assert job_request("p", {"client_kwargs": {"endpoint_url": "http://minio:9000"}})[1] == {}


def test_the_trigger_fires_once_the_job_has_ended(jobs, ray_jobs):
    done = jobs.submit_job(entrypoint="python -c \"print('the job ran')\"")
    trigger = RayJobTrigger("ray_test", done, poll_interval=1)
    classpath, kwargs = trigger.serialize()  # what the triggerer rebuilds it from
    # Rebuilt from its arguments, which name the connection; its token is read where the trigger runs.
    assert classpath == "operators.ray_job.RayJobTrigger" and ray_jobs.env()["RAY_AUTH_TOKEN"] not in json.dumps(kwargs)
    assert _event(RayJobTrigger(**kwargs)) == {"submission_id": done, "status": "SUCCEEDED", "message": ""}


def test_the_trigger_stops_its_job_at_the_deadline_and_when_killed(jobs):
    late, killed = (jobs.submit_job(entrypoint="sleep 120") for _ in range(2))
    event = _event(RayJobTrigger("ray_test", late, poll_interval=0.5, deadline=time.time() + 1))
    assert event["status"] == "TIMEOUT" and _wait_terminal(jobs, late) == JobStatus.STOPPED
    asyncio.run(RayJobTrigger("ray_test", killed).on_kill())  # a user marked the deferred task failed
    assert _wait_terminal(jobs, killed) == JobStatus.STOPPED


def test_a_failed_job_fails_the_task_with_its_last_log_lines(jobs, plan):
    failed = jobs.submit_job(entrypoint="python -c \"import sys; print('boom: no GPU here'); sys.exit(3)\"")
    event = _event(RayJobTrigger("ray_test", failed, poll_interval=0.5))
    assert event["status"] == "FAILED"
    op = RunPlanOperator(task_id="run_plan", plan_uri=plan, ray_conn_id="ray_test")
    with pytest.raises(RuntimeError, match=f"(?s)Ray job {failed} ended FAILED; its last log lines:\n.*boom: no GPU"):
        op.execute_complete(_context()[0], event)


def test_the_task_submits_once_per_try_and_defers(jobs, plan, caplog):
    op = RunPlanOperator(task_id="run_plan", plan_uri=plan, ray_conn_id="ray_test", poll_interval=2,
                         storage_options={"key": "S-key", "secret": "S-secret"})
    # A worker restarted during its try finds the job that try submitted, and waits for it.
    first = submission_id("reelscope_archive", "manual__2026-11-23", "run_plan", -1, 1)
    jobs.submit_job(entrypoint="sleep 120", submission_id=first)
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(_context(try_number=1)[0])
    assert deferred.value.trigger.submission_id == first and deferred.value.method_name == "execute_complete"
    assert jobs.get_job_info(first).entrypoint == "sleep 120"  # not submitted again
    jobs.stop_job(first)
    # The next try submits a job of its own, with the credentials in its environment only.
    with caplog.at_level(logging.INFO, logger="operators.run_plan"), pytest.raises(TaskDeferred) as deferred:
        op.execute(_context(try_number=2)[0])
    second = deferred.value.trigger.submission_id
    assert second == submission_id("reelscope_archive", "manual__2026-11-23", "run_plan", -1, 2)
    info = jobs.get_job_info(second)
    jobs.stop_job(second)
    assert info.entrypoint.startswith(f"python -m pipeline.orchestrate run-plan {plan} --storage-options ")
    assert info.runtime_env["env_vars"] == {"AWS_ACCESS_KEY_ID": "S-key", "AWS_SECRET_ACCESS_KEY": "S-secret"}
    logged = json.dumps([r.getMessage() for r in caplog.records])
    assert second in logged and "S-" not in logged and "S-" not in info.entrypoint
