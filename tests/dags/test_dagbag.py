"""The DAG files parse fast, without errors, without heavy imports, and declare what the design asks for."""
import re
import subprocess
import sys

import pytest

from airflow_env import REPO

DAG_IDS = {"reelscope_daily", "reelscope_archive"}
HEAVY = ("torch", "ray", "transformers", "decord", "whisper", "pipeline.run")


@pytest.fixture(scope="module")
def bag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags"))


def test_no_import_errors_and_expected_dags(bag):
    assert bag.import_errors == {}
    assert set(bag.dag_ids) == DAG_IDS


def test_each_file_parses_well_under_a_second(bag):
    for stat in bag.dagbag_stats:
        assert stat.duration.total_seconds() < 0.5, stat


@pytest.mark.parametrize("name", sorted(DAG_IDS))
def test_parsing_imports_nothing_heavy(name):
    # A fresh interpreter: this test process may hold Ray or torch already.
    code = (
        "import runpy, sys, time; import airflow.sdk; t = time.perf_counter(); "
        f"runpy.run_path({str(REPO / 'dags' / (name + '.py'))!r}); "
        "print(time.perf_counter() - t); "
        f"print([m for m in {HEAVY!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert float(out[-3]) < 1.0 and out[-2] == "[]", out


@pytest.mark.parametrize("dag_id", sorted(DAG_IDS))
def test_one_run_task_retries_timeouts_pool_assets_and_documented_params(bag, dag_id):
    from airflow.sdk import AssetAlias

    from operators import GPU_POOL

    dag = bag.dags[dag_id]
    # The whole run is one task, not one mapped task per shard: no cap on the number of shards.
    run = dag.get_task("run_plan")
    assert type(run).__name__ == "RunPlanOperator" and run.pool == GPU_POOL and run.execution_timeout is not None
    assert all(t.retry_exponential_backoff for t in dag.tasks)
    assert dag.get_task("validate_and_publish").upstream_task_ids == {"run_plan", dag.tasks[0].task_id}
    assert dag.get_task("validate_and_publish").outlets == [AssetAlias(f"{dag_id}.tables")]
    assert not any(t.outlets for t in dag.tasks if t.task_id != "validate_and_publish")
    documented = set(re.findall(r"^\| `(\w+)` \|", dag.doc_md, re.M))
    assert documented == set(dag.params.keys())


def test_daily_has_data_intervals_and_archive_is_manual(bag):
    from airflow.sdk import CronDataIntervalTimetable
    from airflow.sdk.definitions.timetables.simple import NullTimetable

    daily = bag.dags["reelscope_daily"]
    assert isinstance(daily.timetable, CronDataIntervalTimetable) and daily.timetable.expression == "0 0 * * *"
    archive = bag.dags["reelscope_archive"]
    assert isinstance(archive.timetable, NullTimetable)
    assert {"input_uri", "output_uri", "profile", "shard_size", "force"} <= set(archive.params.keys())
