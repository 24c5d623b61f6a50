#!/usr/bin/env bash
# Laptop trial: the metadata DB, the pool that caps GPU shards, optionally a bucket with sample videos,
# then every Airflow component in one container (`airflow standalone`).
set -euo pipefail

airflow db migrate
airflow pools set "${REELSCOPE_GPU_POOL:-reelscope_gpu}" "${REELSCOPE_GPU_SLOTS:-1}" "reelscope shards running at once"

if [[ -n "${REELSCOPE_TRIAL_BUCKET:-}" ]]; then
  python - <<'PY'
import datetime as dt
import os
import subprocess

import s3fs  # endpoint and credentials from AWS_* in the environment

bucket = os.environ["REELSCOPE_TRIAL_BUCKET"]
fs = s3fs.S3FileSystem()
if not fs.exists(bucket):
    fs.mkdir(bucket)
# Yesterday: the interval of the daily DAG's first run, so that run has something to do.
inbox = f"{bucket}/inbox/dt={dt.date.today() - dt.timedelta(days=1)}/"
if not fs.exists(inbox):
    subprocess.run(["reelscope", "sample", "/tmp/reelscope-samples"], check=True)
    fs.put("/tmp/reelscope-samples/", inbox, recursive=True)
print(f"sample media in s3://{inbox}")
PY
fi

exec airflow "${@:-standalone}"
