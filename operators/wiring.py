"""The part both DAGs share: one mapped Ray task per listed shard, validation of what they wrote, and a
teardown that frees the output whatever happened."""
from __future__ import annotations

from operators.common import GPU_POOL, SHARD_TIMEOUT, STORAGE_TEMPLATES
from operators.ray_shard import RayShardOperator
from operators.validate import ReleaseOutputOperator, ValidateAndPublishOperator


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
    # A teardown: it runs once the run's work is over, failed or not, and does not decide the run's state.
    release = ReleaseOutputOperator(task_id="release_output", plan_uri=listing.output["plan"], **STORAGE_TEMPLATES)
    publish >> release.as_teardown()
    return publish
