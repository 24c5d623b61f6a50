"""
### reelscope_daily

Every interval (`@daily` by default; `REELSCOPE_DAILY_SCHEDULE` sets another cron), processes the media
that arrived in its data interval under `input_uri` into the `dt=` partition of `output_uri`:
with a `dt=YYYY-MM-DD/` prefix layout under the input, the day prefixes of the interval; otherwise the
objects whose modification time falls in `[data_interval_start, data_interval_end)`.
Rerunning an interval (a cleared run, or `airflow backfill create --dag-id reelscope_daily --from-date ...
--to-date ... --reprocess-behavior completed`) replaces its partition instead of adding rows:
**list_interval** plans every input of the interval, **run_plan** runs the plan in one pipeline (one Ray
Job, deferred, with `ray_conn_id`; else Ray in the task) that commits into the run's staging tables, and
**validate_and_publish** checks them and replaces `dt = ...` in one Delta commit per table, so readers see
the old partition until then and a failed rerun leaves it whole; it then writes the run manifest under
`<output_uri>/_runs/` and updates the tables' assets through the alias `reelscope_daily.tables`, with the
partition and the published versions as the events' extra.

| param | meaning |
| --- | --- |
| `input_uri` | where media arrive (default `REELSCOPE_DAILY_INPUT`) |
| `output_uri` | output root (default `REELSCOPE_DAILY_OUTPUT`); tables get a `dt=` partition |
| `layout` | `auto`, `dt` (day prefixes) or `mtime` (modification time) |
| `profile` | `tiny`, `cpu` or `gpu` (default `REELSCOPE_PROFILE`) |
| `shard_size` | videos per shard: one commit each |
| `config_file` | optional YAML run config, read when listing (the plan carries it) |
| `storage_options` | explicit s3fs options (JSON object) |
| `aws_conn_id` | Airflow AWS connection for S3; empty: the `AWS_*` environment |
| `ray_conn_id` | Ray dashboard connection: the run is one Ray Job; empty: Ray in the task |

Scheduled and backfilled runs use the defaults; `--dag-run-conf` overrides them.
"""
from __future__ import annotations

import datetime as dt
import os

from airflow.sdk import DAG, CronDataIntervalTimetable, Param

from operators import (
    LISTING_TEMPLATES,
    ListAndShardOperator,
    run_and_publish,
    shared_params,
    task_defaults,
)

with DAG(
    dag_id="reelscope_daily",
    # A data-interval timetable: each run owns [start, end), which a bare cron string no longer gives in Airflow 3.
    schedule=CronDataIntervalTimetable(os.environ.get("REELSCOPE_DAILY_SCHEDULE", "@daily"), timezone="UTC"),
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    default_args=task_defaults(),
    params={
        "input_uri": Param(os.environ.get("REELSCOPE_DAILY_INPUT", "s3://reelscope/inbox/"), type="string",
                           minLength=1, description="Where new media arrive."),
        "output_uri": Param(os.environ.get("REELSCOPE_DAILY_OUTPUT", "s3://reelscope/daily/"), type="string",
                            minLength=1, description="Output root; each interval writes its own dt= partition."),
        "layout": Param("auto", type="string", enum=["auto", "dt", "mtime"],
                        description="How arrivals are told apart: day prefixes or modification time."),
        **shared_params(),
    },
    render_template_as_native_obj=True,
    doc_md=__doc__,
    tags=["reelscope"],
) as dag:
    listing = ListAndShardOperator(
        task_id="list_interval",
        interval_start="{{ data_interval_start }}",
        interval_end="{{ data_interval_end }}",
        layout="{{ params.layout }}",
        replace_partition=True,
        **LISTING_TEMPLATES,
    )
    run_and_publish(listing)
