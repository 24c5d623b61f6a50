"""Entry points for orchestrators: list-and-shard, run-plan, validate-and-publish, maintain.

Airflow operators and Ray Jobs call these (``python -m pipeline.orchestrate run-plan <plan>``); they pass
URIs and counts, never data, and import no Airflow. Each step is idempotent: a retry or a rerun rewrites the
same deterministic shards and the same run manifest, and skips the shards its run committed already.
"""
from pipeline.orchestrate.interval import as_utc, items_in_interval, partition_for_interval
from pipeline.orchestrate.plan import (
    build_config, list_and_shard, outcome_table, read_record, result_path, run_key, run_plan, run_result_path,
)
from pipeline.orchestrate.storage import (
    merge_storage_options,
    storage_options_from_connection,
    storage_options_from_env,
    without_secrets,
)
from pipeline.orchestrate.validate import ValidationError, maintain_output, release_run, validate_and_publish

__all__ = [
    "ValidationError",
    "as_utc",
    "build_config",
    "items_in_interval",
    "list_and_shard",
    "maintain_output",
    "merge_storage_options",
    "outcome_table",
    "partition_for_interval",
    "read_record",
    "release_run",
    "result_path",
    "run_key",
    "run_plan",
    "run_result_path",
    "storage_options_from_connection",
    "storage_options_from_env",
    "validate_and_publish",
    "without_secrets",
]
