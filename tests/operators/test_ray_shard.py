"""The Ray Jobs path of RayShardOperator against a stand-in for JobSubmissionClient (no cluster here)."""
import json
from types import SimpleNamespace

import pytest
from ray.job_submission import JobStatus

from operators.ray_shard import RayShardOperator, dashboard_address, submission_id


class FakeJobs:
    """Answers like JobSubmissionClient: unknown ids raise RuntimeError; statuses advance per poll."""

    def __init__(self, statuses, on_poll=None):
        self.statuses = list(statuses)
        self.on_poll = on_poll
        self.submitted, self.stopped = [], []

    def get_job_status(self, job_id):
        if not any(sid == job_id for _, sid in self.submitted):
            raise RuntimeError(f"Request failed with status code 404: Job {job_id} does not exist.")
        if self.on_poll:
            self.on_poll()
        return self.statuses.pop(0)

    def submit_job(self, *, entrypoint, submission_id, runtime_env=None):
        self.submitted.append((entrypoint, submission_id))
        return submission_id

    def get_job_logs(self, job_id):
        return "Traceback ...\nKeyboardInterrupt\n"

    def stop_job(self, job_id):
        self.stopped.append(job_id)
        return True


def _context(map_index=3, try_number=1):
    ti = SimpleNamespace(dag_id="reelscope_archive", run_id="manual__2026-11-23", task_id="run_shard",
                         map_index=map_index, try_number=try_number)
    return {"ti": ti}


@pytest.fixture
def shard(tmp_path):
    uri = f"file://{tmp_path}/_plans/run/shard-00003.txt"
    counts = {"discovered": 2, "ok": 1, "failed": 1, "skipped": 0, "shards": 1, "keyframes": 4,
              "segments": 2, "summaries": 1, "wall_s": 3.2, "load_s": 1.5}
    (tmp_path / "_plans" / "run").mkdir(parents=True)
    (tmp_path / "_plans" / "run" / "shard-00003.result.json").write_text(
        json.dumps({**counts, "failures": [{"uri": "file:///b.mp4", "error": "decode: not a video"}]}))
    return uri, counts


def _operator(monkeypatch, fake, shard_uri):
    op = RayShardOperator(task_id="run_shard", shard_uri=shard_uri, ray_conn_id="ray_default", poll_interval=0,
                          storage_options={"key": "secret-key", "client_kwargs": {"endpoint_url": "http://minio:9000"}})
    monkeypatch.setattr(op, "_jobs_client", lambda: fake)
    return op


def test_submits_polls_and_returns_counts(monkeypatch, shard):
    shard_uri, counts = shard
    fake = FakeJobs([JobStatus.PENDING, JobStatus.RUNNING, JobStatus.SUCCEEDED])
    assert _operator(monkeypatch, fake, shard_uri).execute(_context()) == counts
    (entrypoint, sid), = fake.submitted
    assert sid == submission_id("reelscope_archive", "manual__2026-11-23", "run_shard", 3, 1)
    assert entrypoint.startswith(f"python -m pipeline.orchestrate run-shard {shard_uri} --storage-options ")
    assert "minio:9000" in entrypoint and "secret-key" not in entrypoint


def test_a_restarted_worker_attaches_to_its_job(monkeypatch, shard):
    shard_uri, counts = shard
    fake = FakeJobs([JobStatus.RUNNING, JobStatus.SUCCEEDED])
    sid = submission_id("reelscope_archive", "manual__2026-11-23", "run_shard", 3, 1)
    fake.submitted.append(("already running", sid))
    assert _operator(monkeypatch, fake, shard_uri).execute(_context()) == counts
    assert len(fake.submitted) == 1


def test_kill_stops_the_job_and_fails_the_task(monkeypatch, shard):
    shard_uri, _ = shard
    fake = FakeJobs([JobStatus.RUNNING, JobStatus.STOPPED])
    op = _operator(monkeypatch, fake, shard_uri)
    fake.on_poll = lambda: op.on_kill() if len(fake.statuses) == 1 else None
    with pytest.raises(RuntimeError, match="ended STOPPED"):
        op.execute(_context())
    assert fake.stopped == [fake.submitted[0][1]]


def test_submission_ids_are_deterministic_per_try():
    a = submission_id("d", "r", "t", 0, 1)
    assert a == submission_id("d", "r", "t", 0, 1)
    assert len({a, submission_id("d", "r", "t", 1, 1), submission_id("d", "r", "t", 0, 2)}) == 3


def test_dashboard_address():
    assert dashboard_address("ray-head", None, None) == "http://ray-head:8265"
    assert dashboard_address("ray-head", 8266, "https") == "https://ray-head:8266"
    assert dashboard_address("http://ray-head:8265", None, "") == "http://ray-head:8265"


def test_nested_credentials_stay_out_of_the_job_and_its_log_line(monkeypatch, shard, caplog):
    import logging

    from tests.pipeline.test_secrets import SPELLINGS

    shard_uri, _ = shard
    fake = FakeJobs([JobStatus.SUCCEEDED])
    op = _operator(monkeypatch, fake, shard_uri)
    op.storage_options = SPELLINGS
    with caplog.at_level(logging.INFO, logger="operators.ray_shard"):
        op.execute(_context())
    (entrypoint, _), = fake.submitted
    logged = next(r.getMessage() for r in caplog.records if "submitted Ray job" in r.getMessage())
    assert "minio:9000" in entrypoint and "minio:9000" in logged
    assert "S-" not in entrypoint and "S-" not in logged, entrypoint
