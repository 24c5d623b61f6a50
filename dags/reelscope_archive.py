"""
### reelscope_archive

A one-off sweep over an archive of any size, triggered by hand: **list_and_shard** lists the media under
`input_uri` and writes one shard plan per shard (skipping videos already done unless `force`), with the
resolved run configuration; **run_plan** runs every shard of the plan in one pipeline: as one Ray Job when
`ray_conn_id` names a cluster (the task defers and holds no worker slot meanwhile), else on Ray inside the
task, and logs a table of each shard's outcome (XCom `shards`); **validate_and_publish** checks the Delta
tables' schemas and that every input has exactly one `videos` row, writes `<output_uri>/_runs/<run>.json`,
and updates the four tables' assets through the alias `reelscope_archive.tables` (a downstream DAG can
schedule on it); **maintain** compacts the small files the shard commits left and vacuums files older than
`retention_hours` that no table version needs. Rerunning it, or retrying the run (a retry submits a new
job), never duplicates rows: each shard commits one Delta transaction per table, and a shard that its run
committed already is skipped.

| param | meaning |
| --- | --- |
| `input_uri` | folder, glob, `s3://bucket/prefix` or manifest (`.csv`/`.parquet`/`.txt`) of the media |
| `output_uri` | where the four tables go, e.g. `s3://lake/reelscope/` |
| `profile` | `tiny` (offline test models), `cpu` or `gpu` |
| `shard_size` | videos per shard: one commit each (any number of shards) |
| `force` | redo videos that are already done |
| `retry_failed` | also redo the videos whose committed row failed |
| `retention_hours` | vacuum keeps files that versions this recent need (default 168) |
| `config_file` | optional YAML run config, read when listing (the plan carries it) |
| `storage_options` | explicit s3fs options (JSON object) |
| `aws_conn_id` | Airflow AWS connection for S3; empty: the `AWS_*` environment |
| `ray_conn_id` | Ray dashboard connection: the run is one Ray Job; empty: Ray in the task |

```
airflow dags trigger reelscope_archive \
  --conf '{"input_uri": "s3://archive/2019/", "output_uri": "s3://lake/reelscope/"}'
```
"""
from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG, Param

from operators import (
    LISTING_TEMPLATES,
    STORAGE_TEMPLATES,
    ListAndShardOperator,
    MaintainOperator,
    run_and_publish,
    shared_params,
    task_defaults,
)

with DAG(
    dag_id="reelscope_archive",
    schedule=None,
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    default_args=task_defaults(),
    params={
        "input_uri": Param("", type="string", minLength=1,
                           description="Media to process: folder, glob, URI prefix or manifest."),
        "output_uri": Param("", type="string", minLength=1, description="Output root for the four tables."),
        "force": Param(False, type="boolean", description="Redo videos that are already done."),
        "retry_failed": Param(False, type="boolean", description="Also redo videos whose committed row failed."),
        "retention_hours": Param(168, type="number", minimum=0,
                                 description="Vacuum keeps the files that table versions this recent need."),
        **shared_params(),
    },
    render_template_as_native_obj=True,
    doc_md=__doc__,
    tags=["reelscope"],
) as dag:
    listing = ListAndShardOperator(
        task_id="list_and_shard",
        force="{{ params.force }}",
        retry_failed="{{ params.retry_failed }}",
        **LISTING_TEMPLATES,
    )
    publish = run_and_publish(listing)
    publish >> MaintainOperator(
        task_id="maintain", plan_uri=listing.output["plan"], retention_hours="{{ params.retention_hours }}",
        **STORAGE_TEMPLATES,
    )
