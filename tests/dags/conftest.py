"""Airflow test set-up: the environment at import time, the metadata DB and the GPU pool once per session."""
import pytest

from airflow_env import configure

configure()


@pytest.fixture(scope="session")
def airflow_db():
    """``airflow db migrate`` on a fresh SQLite file, and the pool the shard tasks run in."""
    from airflow.models.pool import Pool
    from airflow.utils.db import initdb

    from operators import GPU_POOL

    initdb()
    Pool.create_or_update_pool(GPU_POOL, slots=1, description="reelscope GPU shards", include_deferred=False)

