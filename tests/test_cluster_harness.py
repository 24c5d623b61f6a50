"""The loopback cluster harness (tests/cluster.py): real nodes that schedule, take jobs, and die when killed.

The driver runs in a subprocess: this test process may have a Ray of its own (the session's ``ray_session``).
"""
from __future__ import annotations

import json
import subprocess
import sys
import time

import psutil
import pytest

from tests.cluster import LoopbackCluster

pytestmark = pytest.mark.ray  # starts Ray, though through no fixture that conftest.py marks by

_DRIVER = """
import json, os, ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

ray.init()  # RAY_ADDRESS and the auth settings come from the cluster's env()

@ray.remote(num_cpus=1)
def where():
    return ray.get_runtime_context().get_node_id(), os.getpid(), ray.get_gpu_ids()

alive = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
pinned = [where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False)).remote() for n in alive]
gpu = where.options(num_cpus=0, num_gpus=1).remote()
print(json.dumps({"driver": ray.get_runtime_context().get_node_id(), "pinned": ray.get(pinned), "gpu": ray.get(gpu)}))
"""

_JOB = """
import ray
ray.init()
node = ray.remote(num_cpus=0, num_gpus=1)(lambda: ray.get_runtime_context().get_node_id())
print("job ran on", ray.get(node.remote()))
"""


def test_two_nodes_schedule_take_a_job_and_die_when_killed(tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    with LoopbackCluster(tmp_path, head_cpus=1) as cluster:
        worker = cluster.add_node(num_cpus=1, num_gpus=2)
        head = cluster.head
        assert {head.node_id, worker.node_id} == {n["node_id"] for n in cluster.state() if n["state"] == "ALIVE"}

        script = tmp_path / "driver.py"
        script.write_text(_DRIVER)
        run = subprocess.run([sys.executable, str(script)], env=cluster.env(), capture_output=True, text=True,
                             timeout=60)
        assert run.returncode == 0, run.stderr[-3000:]
        seen = json.loads(run.stdout.strip().splitlines()[-1])
        assert seen["driver"] == head.node_id  # a driver given the address attaches to the head
        assert sorted(node for node, _, _ in seen["pinned"]) == sorted([head.node_id, worker.node_id])
        gpu_node, gpu_pid, gpu_ids = seen["gpu"]
        assert gpu_node == worker.node_id and len(gpu_ids) == 1  # the head declares no GPU
        workers = [pid for _, pid, _ in seen["pinned"]] + [gpu_pid]

        jobs = JobSubmissionClient(cluster.dashboard_url, headers=cluster.headers())
        job = jobs.submit_job(entrypoint=f"{sys.executable} -c '{_JOB}'")
        deadline = time.monotonic() + 60
        while (status := jobs.get_job_status(job)) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
            assert time.monotonic() < deadline, status
            time.sleep(0.5)
        assert status == JobStatus.SUCCEEDED, jobs.get_job_logs(job)
        assert f"job ran on {worker.node_id}" in jobs.get_job_logs(job)

        assert worker.pids()
        cluster.kill_node(worker)
        assert worker.pids() == [] and not _alive(gpu_pid)  # its raylet and its workers, at once
        cluster.wait_node(worker, alive=False)
        assert [n["state"] for n in cluster.state() if n["node_id"] == head.node_id] == ["ALIVE"]
    assert cluster.pids() == [] and not any(_alive(pid) for pid in workers)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
