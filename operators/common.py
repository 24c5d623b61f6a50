"""What the reelscope operators and DAGs share: task defaults, the GPU pool, storage options, coercions.

Defaults are read from the environment at parse time so a deployment (or a test) can tune retries and
timeouts without editing DAG files.
"""
from __future__ import annotations

import datetime as dt
import json
import os
from typing import Any, Mapping

GPU_POOL = os.environ.get("REELSCOPE_GPU_POOL", "reelscope_gpu")
# A whole run, all of its shards: the Ray job is stopped, and the task fails (and retries), past it.
RUN_TIMEOUT = dt.timedelta(hours=float(os.environ.get("REELSCOPE_RUN_TIMEOUT_H", "48")))


def task_defaults() -> dict:
    """Retries with exponential back-off (1 min, 2 min, 4 min ... at most 30 min) for every task."""
    return {
        "owner": "reelscope",
        "retries": int(os.environ.get("REELSCOPE_RETRIES", "3")),
        "retry_delay": dt.timedelta(seconds=float(os.environ.get("REELSCOPE_RETRY_DELAY_S", "60"))),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": dt.timedelta(minutes=30),
    }


def as_bool(value: Any) -> bool:
    """Params rendered as text arrive as ``"False"``; ``bool("False")`` would be True."""
    if isinstance(value, str):
        if value.strip().lower() in ("1", "true", "yes", "on"):
            return True
        if value.strip().lower() in ("", "0", "false", "no", "off", "none"):
            return False
        raise ValueError(f"not a boolean: {value!r}")
    return bool(value)


def as_dict(value: Any) -> dict:
    """A mapping param, given as a mapping or as JSON text (empty means none)."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        value = json.loads(value)
    if not isinstance(value, Mapping):
        raise ValueError(f"expected a mapping, got {type(value).__name__}")
    return dict(value)


def or_none(value: Any) -> Any:
    """Empty strings from unset params mean "not given"."""
    return None if value in ("", "None") else value


def resolve_storage_options(aws_conn_id: str | None, explicit: Any) -> dict:
    """Storage options from an Airflow AWS connection (if named), overlaid with explicit options.

    The environment (``AWS_*``) and the run's config file are layered in by the library itself.
    """
    from pipeline.orchestrate import merge_storage_options, storage_options_from_connection

    from_conn = {}
    if or_none(aws_conn_id):
        from airflow.sdk import BaseHook

        conn = BaseHook.get_connection(aws_conn_id)
        from_conn = storage_options_from_connection(conn.login, conn.password, conn.extra_dejson)
    return merge_storage_options(from_conn, as_dict(explicit))


# Every operator reads storage settings from the same two DAG params.
STORAGE_TEMPLATES = {"storage_options": "{{ params.storage_options }}", "aws_conn_id": "{{ params.aws_conn_id }}"}
# What both DAGs hand their listing task from the params they share.
LISTING_TEMPLATES = {
    "input_uri": "{{ params.input_uri }}",
    "output_uri": "{{ params.output_uri }}",
    "profile": "{{ params.profile }}",
    "config_file": "{{ params.config_file }}",
    "shard_size": "{{ params.shard_size }}",
    **STORAGE_TEMPLATES,
}


def shared_params() -> dict:
    """The params both DAGs take besides their input and output (documented in each DAG's docs)."""
    from airflow.sdk import Param

    env = os.environ.get
    return {
        "profile": Param(env("REELSCOPE_PROFILE", "tiny"), type="string", enum=["tiny", "cpu", "gpu"],
                         description="Model profile."),
        "shard_size": Param(int(env("REELSCOPE_SHARD_SIZE", "8")), type="integer", minimum=1,
                            description="Videos per shard: one commit and one set of output files."),
        "config_file": Param("", type="string",
                             description="Optional YAML run config, read when the run is listed."),
        "storage_options": Param({}, type="object",
                                 description='Explicit s3fs options: {"client_kwargs": {"endpoint_url": "..."}}.'),
        "aws_conn_id": Param(env("REELSCOPE_AWS_CONN_ID", ""), type="string",
                             description="Airflow AWS connection for S3; empty: the AWS_* environment."),
        "ray_conn_id": Param(env("REELSCOPE_RAY_CONN_ID", ""), type="string",
                             description="Ray dashboard connection for Ray Jobs; empty: Ray in the task."),
    }
