"""validate-and-publish: check a finished run against its plan, then write the run manifest.

Checks, over the committed shards of the run's partition: every data file matches the schema in
``schemas/`` and the row count its manifest promised; no ``video_id`` appears twice; every input the plan
listed has exactly one ``videos`` row. Only a run that passes gets ``<output>/_runs/<run>.json``.
"""
from __future__ import annotations

import collections
import datetime as dt
import logging
import posixpath
from typing import Any, Mapping

import pyarrow.parquet as pq

from pipeline.config import PIPELINE_VERSION
from pipeline.discover import video_id_for
from pipeline.orchestrate.plan import INPUTS_FILE, result_path, run_key
from pipeline.orchestrate.storage import merge_storage_options, storage_options_from_env
from pipeline.lease import Lease
from pipeline.repair import repair
from pipeline.tables import Output, open_output
from schemas import SCHEMA_VERSION, TABLES, schema_for
from schemas.manifest import ShardManifest
from schemas.run import RunManifest, RunPlan, ShardOutcome, ShardResult

log = logging.getLogger(__name__)

RUNS_DIR = "_runs"
_SHOWN = 5  # problems quoted in the error message; the log has them all


class ValidationError(RuntimeError):
    """The tables do not match the plan; the message summarises the problems."""


def _check_files(output: Output, manifest: ShardManifest, problems: list[str]) -> dict[str, int]:
    rows = {}
    shard = manifest.shard_id
    if manifest.schema_version != SCHEMA_VERSION:
        found = manifest.schema_version
        problems.append(f"shard {shard}: schema version {found!r}, expected {SCHEMA_VERSION!r}")
    for table in TABLES:
        entry = manifest.files[table]
        with output.fs.open(output.file_path(manifest, table), "rb") as f:
            parquet = pq.ParquetFile(f)  # the footer only: schema and row count, no data pages
            actual, meta = parquet.schema_arrow, parquet.metadata
        dim = manifest.embedding_dim
        if table == "keyframes" and dim is None:
            dim = actual.field("embedding").type.list_size
        expected = schema_for(table, dim) if table == "keyframes" else schema_for(table)
        if not actual.equals(expected, check_metadata=False):
            problems.append(f"shard {shard}: {table} file does not match the {table} schema")
        if meta.num_rows != entry.rows:
            problems.append(f"shard {shard}: {table} has {meta.num_rows} rows, its manifest says {entry.rows}")
        rows[table] = meta.num_rows
    return rows


def validate_and_publish(plan_uri: str, storage_options: Mapping[str, Any] | None = None) -> str:
    """Validate the run described by ``plan_uri``; write and return the run manifest's URI.

    Raises ``ValidationError`` (after logging every problem) when the tables do not add up.
    """
    fs, plan_path, plan, output = _open_plan(plan_uri, storage_options)
    plan_dir = posixpath.dirname(plan_path)
    inputs = [line for line in fs.cat_file(posixpath.join(plan_dir, INPUTS_FILE)).decode().splitlines() if line]
    # The run's last task: it joins the run's lease, repairs and validates under it, and frees the output.
    with Lease(output, run_key(plan.run_id), shared=True, joins=True, release=True):
        repair(output)
        return _validate(output, plan, plan_uri, inputs, fs)


def release_run(plan_uri: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """Free the output from the run of ``plan_uri`` whatever became of it (a no-op once validation freed
    it): a run whose shards failed must not keep the next run out until its lease expires. A retry of the
    same run takes the lease again."""
    _, _, plan, output = _open_plan(plan_uri, storage_options)
    Lease(output, run_key(plan.run_id), shared=True).release()


def _open_plan(plan_uri: str, storage_options: Mapping[str, Any] | None) -> tuple[Any, str, RunPlan, Output]:
    """The run's plan (its filesystem and path too) and the output it writes, with the environment's storage
    options under the caller's."""
    opts = merge_storage_options(storage_options_from_env(), storage_options)
    fs, plan_path = open_output(plan_uri, opts)
    plan = RunPlan.from_json(fs.cat_file(plan_path))
    return fs, plan_path, plan, Output(plan.output_uri, opts, plan.partition)


def _validate(output: Output, plan: RunPlan, plan_uri: str, inputs: list[str], fs) -> str:
    """Check the committed shards against the plan; publish the run manifest when they add up."""
    problems: list[str] = []
    rows = collections.Counter()
    manifests = output.manifests()
    for manifest in manifests:
        rows.update(_check_files(output, manifest, problems))
    videos = output.read_table("videos", columns=["video_id", "status"], all_partitions=False)
    seen = collections.Counter(videos.column("video_id").to_pylist())
    problems += [f"video {v} has {n} videos rows" for v, n in sorted(seen.items()) if n > 1]
    missing = [u for u in inputs if video_id_for(u) not in seen]
    problems += [f"input {u} has no videos row" for u in missing]
    if problems:
        for p in problems:
            log.error("validation: %s", p)
        more = f"; and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else ""
        shown = "; ".join(problems[:_SHOWN]) + more
        raise ValidationError(f"{len(problems)} problem(s) in {plan.output_uri}: {shown}")

    status = collections.Counter(videos.column("status").to_pylist())
    outcomes = []
    for shard in plan.shards:
        rpath = result_path(open_output(shard.uri, output.storage_options)[1])
        result = ShardResult.from_json(fs.cat_file(rpath)) if fs.exists(rpath) else None
        outcomes.append(ShardOutcome(shard.uri, shard.shard_id, shard.videos, result))
    manifest = RunManifest(
        run_id=plan.run_id,
        plan=plan_uri,
        input_uri=plan.input_uri,
        output_uri=plan.output_uri,
        config_fingerprint=plan.config_fingerprint,
        pipeline_version=PIPELINE_VERSION,
        schema_version=SCHEMA_VERSION,
        partition=plan.partition,
        interval=plan.interval,
        profile=plan.profile,
        inputs=len(inputs),
        processed=plan.pending,
        skipped=plan.skipped,
        videos={"ok": status.get("ok", 0), "failed": status.get("failed", 0)},
        rows={t: rows.get(t, 0) for t in TABLES},
        committed_shards=tuple(sorted(m.shard_id for m in manifests)),
        shards=tuple(outcomes),
        validated_at=dt.datetime.now(dt.timezone.utc).isoformat(),
    )
    path = posixpath.join(output.root, RUNS_DIR, f"{run_key(plan.run_id)}.json")
    output.fs.makedirs(posixpath.dirname(path), exist_ok=True)
    output.fs.pipe_file(path, manifest.to_json().encode())
    uri = output.fs.unstrip_protocol(path)
    log.info("run %s valid: %d inputs, rows %s; manifest %s", plan.run_id, len(inputs), manifest.rows, uri)
    return uri
