"""Thin Airflow operators over ``pipeline.orchestrate``: list-and-shard, run-plan (one Ray Job, deferred),
validate-and-publish, maintain.

They import Airflow's task SDK only; the pipeline (and Ray) is imported inside ``execute``, torch only where
a run happens in the task's own process.
"""
from operators.common import (
    GPU_POOL, LISTING_TEMPLATES, RUN_TIMEOUT, STORAGE_TEMPLATES, shared_params, task_defaults,
)
from operators.lineage import tables_alias
from operators.list_and_shard import ListAndShardOperator
from operators.run_plan import RunPlanOperator
from operators.validate import MaintainOperator, ReleaseOutputOperator, ValidateAndPublishOperator
from operators.wiring import run_and_publish

__all__ = [
    "GPU_POOL",
    "LISTING_TEMPLATES",
    "RUN_TIMEOUT",
    "STORAGE_TEMPLATES",
    "ListAndShardOperator",
    "MaintainOperator",
    "ReleaseOutputOperator",
    "RunPlanOperator",
    "ValidateAndPublishOperator",
    "run_and_publish",
    "shared_params",
    "task_defaults",
    "tables_alias",
]
