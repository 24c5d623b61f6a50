"""validate-and-publish: check a finished run against its plan, publish it, then write the run manifest.

Checks, on the Delta tables of the run's partition (its staging tables, for a partition replacement): each
table's schema is the one in ``schemas/``; no ``video_id`` has two ``videos`` rows; every input the plan
listed has exactly one; every keyframe, segment and summary of the run's inputs belongs to a video with a
``videos`` row. A partition replacement that passes is then published (``pipeline.store.publish_partition``:
one commit per table); only a run that passes gets ``<output>/_runs/<run>.json``.
"""
from __future__ import annotations

import collections
import datetime as dt
import logging
import posixpath
from typing import Any, Mapping

import pyarrow as pa
import pyarrow.dataset as ds

from pipeline.config import PIPELINE_VERSION
from pipeline.discover import video_id_for
from pipeline.orchestrate.plan import INPUTS_FILE, result_path, run_key, table_uris
from pipeline.orchestrate.storage import merge_storage_options, storage_options_from_env
from pipeline.store import Output, commit_key, open_output, publish_partition, read_commits, table_version
from pipeline.store.lease import Lease
from pipeline.store.maintain import RETENTION_HOURS, maintain
from schemas import SCHEMA_VERSION, TABLES
from schemas.commit import CommitRecord
from schemas.run import RunManifest, RunPlan, ShardOutcome, ShardResult

log = logging.getLogger(__name__)

RUNS_DIR = "_runs"
_SHOWN = 5  # problems quoted in the error message; the log has them all


class ValidationError(RuntimeError):
    """The tables do not match the plan; the message summarises the problems."""


def validate_and_publish(plan_uri: str, storage_options: Mapping[str, Any] | None = None) -> str:
    """Validate the run described by ``plan_uri``; write and return the run manifest's URI.

    Raises ``ValidationError`` (after logging every problem) when the tables do not add up.
    """
    fs, plan_path, plan, output = _open_plan(plan_uri, storage_options)
    plan_dir = posixpath.dirname(plan_path)
    inputs = [line for line in fs.cat_file(posixpath.join(plan_dir, INPUTS_FILE)).decode().splitlines() if line]
    # The run's last task: it joins the run's lease, validates and publishes under it, and frees the output.
    with Lease(output, run_key(plan.run_id), shared=True, joins=True, release=True):
        return _validate(output, plan, plan_uri, inputs, fs, plan_dir)


def release_run(plan_uri: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """Free the output from the run of ``plan_uri`` whatever became of it (a no-op once validation freed
    it): a run whose shards failed must not keep the next run out until its lease expires. A retry of the
    same run takes the lease again."""
    _, _, plan, output = _open_plan(plan_uri, storage_options)
    Lease(output, run_key(plan.run_id), shared=True).release()


def maintain_output(plan_uri: str, storage_options: Mapping[str, Any] | None = None,
                    retention_hours: float = RETENTION_HOURS) -> dict[str, int]:
    """Compact and vacuum the output a run wrote (``pipeline.store.maintain``), after the run; returns the
    files per table afterwards. Readers and later shard commits go on meanwhile."""
    _, _, plan, output = _open_plan(plan_uri, storage_options)
    root = Output(output.uri, output.storage_options)
    done = maintain(root, retention_hours=retention_hours, run=f"maintain-{run_key(plan.run_id)}")
    for m in done:
        log.info("maintain %s: %d -> %d files, %d stray video(s), %d file(s) vacuumed", m.table, m.files_before,
                 m.files_after, m.stray_rows, m.vacuumed)
    return {m.table: m.files_after for m in done}


def _open_plan(plan_uri: str, storage_options: Mapping[str, Any] | None) -> tuple[Any, str, RunPlan, Output]:
    """The run's plan (its filesystem and path too) and the output it writes, with the environment's storage
    options under the caller's."""
    opts = merge_storage_options(storage_options_from_env(), storage_options)
    fs, plan_path = open_output(plan_uri, opts)
    plan = RunPlan.from_json(fs.cat_file(plan_path))
    return fs, plan_path, plan, Output(plan.output_uri, opts, plan.partition)


def _comparable(schema: pa.Schema) -> list[tuple[str, str]]:
    """Names and types, with the embedding as the plain list Delta keeps of a fixed-size one (list items
    named as Delta names them, nullability aside)."""
    out = []
    for f in schema:
        t = f.type
        if pa.types.is_fixed_size_list(t) or pa.types.is_list(t) and f.name == "embedding":
            t = pa.list_(pa.float32())
        out.append((f.name, str(t).replace(" not null", "").replace("<item: ", "<element: ")))
    return out


def check_tables(output: Output, inputs: list[str]) -> tuple[list[str], dict[str, int], collections.Counter]:
    """The problems found in ``output``'s partition, the rows per table, the videos per status."""
    problems: list[str] = []
    rows: dict[str, int] = {}
    part = ds.field(output.partition_column) == output.partition_value if output.partition else None
    ids: dict[str, pa.Table] = {}
    for table in TABLES:
        found = output.table(table)
        if found is None:  # nothing committed yet: the inputs without a videos row say so
            continue
        actual = pa.schema(found.schema().to_arrow())
        if _comparable(actual) != _comparable(output.schema(table)):
            problems.append(f"the {table} table does not have the {table} schema of schema version {SCHEMA_VERSION}")
        columns = ["video_id", "status"] if table == "videos" else ["video_id"]
        ids[table] = output.dataset(table, found=found).to_table(columns=columns, filter=part)
        rows[table] = ids[table].num_rows
    videos = ids.get("videos", pa.table({"video_id": pa.array([], pa.string()), "status": pa.array([], pa.string())}))
    seen = collections.Counter(videos.column("video_id").to_pylist())
    problems += [f"video {v} has {n} videos rows" for v, n in sorted(seen.items()) if n > 1]
    problems += [f"input {u} has no videos row" for u in inputs if video_id_for(u) not in seen]
    wanted = {video_id_for(u) for u in inputs}
    for table in TABLES[1:]:
        stray = {v for v in ids.get(table, pa.table({"video_id": []})).column("video_id").to_pylist()
                 if v in wanted and v not in seen}
        problems += [f"{table} rows of video {v}, which has no videos row" for v in sorted(stray)]
    return problems, rows, collections.Counter(videos.column("status").to_pylist())


def _validate(output: Output, plan: RunPlan, plan_uri: str, inputs: list[str], fs, plan_dir: str) -> str:
    """Check the tables against the plan; publish a partition replacement and the run manifest when they
    add up."""
    key = commit_key(run_key(plan.run_id), plan.plan_id)
    staging = output.staging(key) if plan.replace_partition else None
    published = staging is not None and any(c.kind == "publish" and c.run == key for c in read_commits(output))
    checked = output if staging is None or published else staging  # a retry after publishing checks the result
    problems, rows, status = check_tables(checked, inputs)
    if problems:
        for p in problems:
            log.error("validation: %s", p)
        more = f"; and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else ""
        shown = "; ".join(problems[:_SHOWN]) + more
        raise ValidationError(f"{len(problems)} problem(s) in {plan.output_uri}: {shown}")
    if staging is not None:  # also when published already: then it only removes what a killed try left
        record = CommitRecord(run=key, shard_id="publish", config_fingerprint=plan.config_fingerprint,
                              pipeline_version=PIPELINE_VERSION, profile=plan.profile, rows=rows)
        publish_partition(output, staging, record)
        if not published:
            log.info("partition %s of %s replaced by run %s", output.partition, plan.output_uri, plan.run_id)

    # Every shard's result at once (concurrent requests on object stores); a shard never run has none. Other
    # processes wrote them: no listing this one cached may hide them.
    fs.invalidate_cache(plan_dir)
    rpaths = [result_path(posixpath.join(plan_dir, posixpath.basename(s.uri))) for s in plan.shards]
    texts = fs.cat(rpaths, on_error="omit") if rpaths else {}
    outcomes = [ShardOutcome(s.uri, s.shard_id, s.videos, ShardResult.from_json(texts[p]) if p in texts else None)
                for s, p in zip(plan.shards, rpaths)]
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
        committed_shards=tuple(sorted(s.shard_id for s in plan.shards)),
        shards=tuple(outcomes),
        versions={t: table_version(output, t) for t in TABLES},
        tables=table_uris(output),
        replaced_partition=staging is not None,
        validated_at=dt.datetime.now(dt.timezone.utc).isoformat(),
    )
    path = posixpath.join(output.root, RUNS_DIR, f"{run_key(plan.run_id)}.json")
    output.fs.makedirs(posixpath.dirname(path), exist_ok=True)
    output.fs.pipe_file(path, manifest.to_json().encode())
    uri = output.fs.unstrip_protocol(path)
    log.info("run %s valid: %d inputs, rows %s; manifest %s", plan.run_id, len(inputs), manifest.rows, uri)
    return uri
