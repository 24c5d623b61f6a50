"""
### reelscope_archive

A one-off sweep over an archive of any size, triggered by hand: **list_and_shard** lists the media under
`input_uri` and writes one shard plan per shard (skipping videos already done unless `force`);
**run_shard** runs each shard on Ray (one mapped task per shard, at most `reelscope_gpu` pool slots at
once); **validate_and_publish** checks the Delta tables' schemas and that every input has exactly one `videos`
row, then writes `<output_uri>/_runs/<run>.json`; **maintain** compacts the small files the shard commits
left and vacuums files older than `retention_hours` that no table version needs. Rerunning it, or any
shard, never duplicates rows: each shard commits one Delta transaction per table, and a retried shard that
its run committed already is skipped.

| param | meaning |
| --- | --- |
| `input_uri` | folder, glob, `s3://bucket/prefix` or manifest (`.csv`/`.parquet`/`.txt`) of the media |
| `output_uri` | where the four tables go, e.g. `s3://lake/reelscope/` |
| `profile` | `tiny` (offline test models), `cpu` or `gpu` |
| `shard_size` | videos per shard (grown automatically past `core.max_map_length` shards) |
| `force` | redo videos that are already done |
| `retry_failed` | also redo the videos whose committed row failed |
| `retention_hours` | vacuum keeps files that versions this recent need (default 168) |
| `config_file` | optional YAML run config on the worker |
| `storage_options` | explicit s3fs options (JSON object) |
| `aws_conn_id` | Airflow AWS connection for S3; empty: the `AWS_*` environment |
| `ray_conn_id` | Ray dashboard connection to submit shards as Ray Jobs; empty: Ray in the task |

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
