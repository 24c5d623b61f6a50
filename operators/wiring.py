"""The part both DAGs share: one mapped Ray task per listed shard, then validation of what they wrote."""
from __future__ import annotations

from operators.common import GPU_POOL, SHARD_TIMEOUT, STORAGE_TEMPLATES
from operators.ray_shard import RayShardOperator
from operators.validate import ValidateAndPublishOperator


def run_and_publish(listing) -> ValidateAndPublishOperator:
    """Fan out over ``listing``'s shard plans (XCom: URIs only) and validate the tables they wrote."""
    shards = RayShardOperator.partial(
        task_id="run_shard",
        pool=GPU_POOL,
        execution_timeout=SHARD_TIMEOUT,
        ray_conn_id="{{ params.ray_conn_id }}",
        **STORAGE_TEMPLATES,
    ).expand(shard_uri=listing.output)
    # none_failed: a listing with nothing pending maps zero shards (skipped) and is still validated.
    publish = ValidateAndPublishOperator(
        task_id="validate_and_publish", plan_uri=listing.output["plan"], trigger_rule="none_failed", **STORAGE_TEMPLATES
    )
    shards >> publish
    return publish
