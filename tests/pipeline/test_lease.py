"""The output lease, on a local disk and on the loopback S3: one live run at a time, races won once."""
from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
import threading
import time

import pytest

from pipeline.store import Output, OutputError
from pipeline.store.lease import Lease, LeaseHeld, LeaseLost, LeaseRecord, lease_path


@pytest.fixture(params=["local", "s3"])
def output(request, tmp_path):
    if request.param == "s3":
        bucket, opts = request.getfixturevalue("s3")
        return Output(f"s3://{bucket}/out", opts)
    return Output(str(tmp_path / "out"))


def _record(output: Output) -> LeaseRecord:
    return LeaseRecord.from_json(output.fs.cat_file(lease_path(output)))


def _rewrite(output: Output, **changes) -> None:
    """Edit the lease file as a killed or remote holder would have left it."""
    record = dataclasses.replace(_record(output), **changes)
    output.fs.pipe_file(lease_path(output), record.to_json())


def test_a_live_run_refuses_another_with_one_line(output):
    with Lease(output, "run-a"):
        with pytest.raises(LeaseHeld) as refused:
            Lease(Output(output.uri, output.storage_options), "run-b").acquire()
        message = str(refused.value)
        assert isinstance(refused.value, OutputError) and "\n" not in message
        assert "run-a" in message and "expires 20" in message and output.uri in message
    assert _record(output).released
    Lease(output, "run-b").acquire()  # free once the first has finished


def test_a_stale_lease_is_taken_over_with_a_warning(output, caplog):
    Lease(output, "run-a").acquire()
    _rewrite(output, expires_at=time.time() - 1, pid=1)  # killed: no heartbeat since
    with caplog.at_level(logging.WARNING, logger="pipeline.lease"):
        Lease(output, "run-b").acquire()
    assert _record(output).owner == "run-b"
    assert any("taking over the stale lease of run-a" in r.getMessage() for r in caplog.records)


def test_a_holder_whose_process_is_gone_from_this_host_is_stale_at_once(tmp_path):
    output = Output(str(tmp_path))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    Lease(output, "run-a").acquire()
    _rewrite(output, pid=int(dead.stdout))
    Lease(output, "run-b").acquire()
    assert _record(output).owner == "run-b"


def test_racing_takeovers_have_exactly_one_winner(output):
    Lease(output, "old").acquire()
    _rewrite(output, expires_at=time.time() - 1, pid=1)
    start, won, lost = threading.Barrier(6), [], []

    def contend(n: int) -> None:
        lease = Lease(Output(output.uri, output.storage_options), f"run-{n}")
        start.wait()
        try:
            lease.acquire()
            won.append(n)
        except LeaseHeld:
            lost.append(n)

    threads = [threading.Thread(target=contend, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(lost) == 5 and _record(output).owner == f"run-{won[0]}"


def test_shard_tasks_of_one_run_share_its_lease_and_a_later_run_makes_them_refuse(output):
    Lease(output, "airflow-run-1", shared=True).acquire()  # list_and_shard
    with Lease(output, "airflow-run-1", shared=True, joins=True), Lease(
        Output(output.uri, output.storage_options), "airflow-run-1", shared=True, joins=True
    ):
        with pytest.raises(LeaseHeld, match="in use by run airflow-run-1"):
            Lease(output, "run-cli").acquire()
    assert not _record(output).released  # shard tasks leave it to the validate task
    _rewrite(output, expires_at=time.time() - 1)
    with Lease(output, "run-cli"):  # the run's lease ran out; another run took the output
        pass
    with pytest.raises(LeaseHeld, match="after run airflow-run-1 was planned; plan the run again"):
        Lease(output, "airflow-run-1", shared=True, joins=True).acquire()


def test_a_run_that_lost_its_lease_never_takes_it_back(tmp_path):
    output = Output(str(tmp_path))
    with Lease(output, "run-a") as lease:
        # Run a stalled; run b took the stale lease over, and has even released it since.
        _rewrite(output, owner="run-b", expires_at=time.time() + 60)
        lease.renew()
        with pytest.raises(LeaseLost, match="now held by run-b"):
            lease.check()
        _rewrite(output, owner="run-b", released=True)
        lease.renew()  # run a's next heartbeat: the lease is free, but it was run b's last
        with pytest.raises(LeaseLost):
            lease.check()
    record = json.loads((tmp_path / "_lease.json").read_text())
    assert record["owner"] == "run-b" and record["released"] is True
