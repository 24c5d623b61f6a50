"""The session's Ray cluster for Ray Jobs and multi-node runs: ``tests.cluster.LoopbackCluster``, a head with
its dashboard and a token of its own plus a worker node that declares 2 GPUs (torch finds none there), started
on first use, shared by tests/dags, tests/operators and tests/test_two_node_cluster.py, and shut down when the
session's process exits. A test that kills the worker starts another (``replace_worker``).

Its nodes' AWS variables are set empty, so a job reaches S3 only with the credentials it was sent. Its head's
model cache is the session's, so jobs find the tiny models the session built.
"""
from __future__ import annotations

import atexit
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from tests.cluster import LoopbackCluster

_cluster: LoopbackCluster | None = None


def shared_cluster(model_cache: str) -> LoopbackCluster:
    global _cluster
    if _cluster is None:
        root = Path(tempfile.mkdtemp(prefix="reelscope-jobs-"))
        atexit.register(shutil.rmtree, root, True)
        (root / "head").mkdir()
        (root / "head" / "cache").symlink_to(model_cache)  # the head's REELSCOPE_CACHE (see LoopbackCluster)
        no_credentials = dict.fromkeys(("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"), "")
        # Jobs run ``python -m ...``: this interpreter's, whatever PATH the tests were started with.
        path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
        cluster = LoopbackCluster(root, head_cpus=2, extra_env={**no_credentials, "PATH": path}, timeout_s=180)
        try:
            cluster.start()
            replace_worker(cluster)
        except BaseException:
            cluster.shutdown()
            raise
        atexit.register(cluster.shutdown)
        _cluster = cluster
    return _cluster


def replace_worker(cluster: LoopbackCluster) -> None:
    """A (new) worker node with 2 CPUs and 2 GPUs declared, and a model cache of its own (empty at first)."""
    cluster.worker = cluster.add_node(num_cpus=2, num_gpus=2)


def connection(cluster: LoopbackCluster) -> str:
    """An Airflow connection (``AIRFLOW_CONN_...``) to the cluster's dashboard, with its token as password."""
    token = cluster.env()["RAY_AUTH_TOKEN"]
    return json.dumps({"conn_type": "http", "host": "127.0.0.1", "port": cluster.dashboard_port, "password": token})
