"""The same throwaway Airflow home as tests/dags (set up once, whichever folder is collected first), and the
same Ray head for Ray Jobs."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dags"))

from airflow_env import configure  # noqa: E402

configure()


@pytest.fixture(scope="session")
def ray_jobs(model_cache):
    """A Ray cluster taking Ray Jobs (``tests.cluster.LoopbackCluster``), shared by the session."""
    from ray_jobs import shared_cluster

    return shared_cluster(model_cache)
