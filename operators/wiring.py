"""The part both DAGs share: the planned run as one task (one Ray Job with a cluster), validation and
publishing of what it wrote, and a teardown that frees the output whatever happened."""
from __future__ import annotations

from operators.common import GPU_POOL, RUN_TIMEOUT, STORAGE_TEMPLATES
from operators.lineage import tables_alias
from operators.run_plan import RunPlanOperator
from operators.validate import ReleaseOutputOperator, ValidateAndPublishOperator


def run_and_publish(listing) -> ValidateAndPublishOperator:
    """Run ``listing``'s plan (XCom: its URI) and validate and publish the tables it wrote; the publishing
    task updates the tables' assets through ``tables_alias(<dag id>)``."""
    plan = listing.output["plan"]
    run = RunPlanOperator(
        task_id="run_plan",
        plan_uri=plan,
        # Deferred while a Ray Job runs, the task holds no pool slot; in its own process it holds one.
        pool=GPU_POOL,
        execution_timeout=RUN_TIMEOUT,
        ray_conn_id="{{ params.ray_conn_id }}",
        **STORAGE_TEMPLATES,
    )
    publish = ValidateAndPublishOperator(
        task_id="validate_and_publish", plan_uri=plan, outlets=[tables_alias(listing.dag_id)], **STORAGE_TEMPLATES
    )
    run >> publish
    # A teardown: it runs once the run's work is over, failed or not, and does not decide the run's state.
    release = ReleaseOutputOperator(task_id="release_output", plan_uri=plan, **STORAGE_TEMPLATES)
    publish >> release.as_teardown()
    return publish
