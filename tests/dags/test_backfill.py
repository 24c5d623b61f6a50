"""The daily DAG works with Airflow 3's own backfill: one run per past day, each owning that day's interval."""
import datetime as dt
import os
import subprocess
import sys

import pytest

from airflow_env import REPO
from pipeline.orchestrate import partition_for_interval


@pytest.fixture
def serialized_dags(airflow_db):
    """What the dag-processor does in a deployment: the DAGs parsed and written to the metadata DB."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db
    from airflow.utils.session import create_session

    with create_session() as session:
        DagBundlesManager().sync_bundles_to_db(session=session)
    sync_bag_to_db(DagBag(dag_folder=str(REPO / "dags")), "dags-folder", None)


def test_backfill_create_makes_one_run_per_day(serialized_dags):
    from airflow.models.dagrun import DagRun

    cli = [sys.executable, "-m", "airflow", "backfill", "create", "--dag-id", "reelscope_daily",
           "--from-date", "2026-10-01", "--to-date", "2026-10-03"]
    subprocess.run(cli, check=True, capture_output=True, env=os.environ)
    runs = sorted(DagRun.find(dag_id="reelscope_daily", run_type="backfill"), key=lambda r: r.logical_date)
    intervals = [(r.data_interval_start, r.data_interval_end) for r in runs]
    day = dt.timedelta(days=1)
    assert [partition_for_interval(*i) for i in intervals] == ["dt=2026-10-01", "dt=2026-10-02", "dt=2026-10-03"]
    assert all(end - start == day for start, end in intervals)
