"""Thin Airflow operators over ``pipeline.orchestrate``: list-and-shard, run-shard-on-Ray, validate-and-publish,
maintain.

They import Airflow's task SDK only; the pipeline (and torch, Ray) is imported inside ``execute``.
"""
from operators.common import (
    GPU_POOL, LISTING_TEMPLATES, SHARD_TIMEOUT, STORAGE_TEMPLATES, shared_params, task_defaults,
)
from operators.list_and_shard import ListAndShardOperator
from operators.ray_shard import RayShardOperator
from operators.validate import MaintainOperator, ReleaseOutputOperator, ValidateAndPublishOperator
from operators.wiring import run_and_publish

__all__ = [
    "GPU_POOL",
    "LISTING_TEMPLATES",
    "SHARD_TIMEOUT",
    "STORAGE_TEMPLATES",
    "ListAndShardOperator",
    "MaintainOperator",
    "RayShardOperator",
    "ReleaseOutputOperator",
    "ValidateAndPublishOperator",
    "run_and_publish",
    "shared_params",
    "task_defaults",
]
