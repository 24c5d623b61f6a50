"""list-and-shard and run-plan: a run planned once, then executed as planned.

``list_and_shard`` lists the media, decides what is pending with the same ``plan_shards`` the library run
uses, and writes one shard plan per planned shard under ``<output>/_plans/<run>/``::

    plan.json            what the run is (``schemas.run.RunPlan``): input, output, partition, the resolved
                         configuration (by value, without credentials), shard plans (written last)
    inputs.txt           every listed input, one URI a line (what validation accounts for)
    shard-00000.json     one planned shard (``schemas.plan.ShardPlan``): its id, items and fingerprints
    shard-00000.result.json   ``schemas.run.ShardResult``: counts and failures, written by ``run_plan``
    run.result.json      ``schemas.run.RunResult``: the run's counts and each shard's outcome

``run_plan`` executes every shard plan of a run as written, in one pipeline (``pipeline.run.run_planned``),
with the configuration the plan holds: it lists and plans nothing again and reads no config file, so a
retried or repeated run rewrites the same shards under the same ids instead of adding rows, and skips the
shards an earlier try of the run committed.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import posixpath
import re
import uuid
from typing import Any, Mapping, TypeVar

from pipeline.config import ConfigError, RunConfig, config_from_dict, config_to_dict, load_config
from pipeline.discover import discover, plan_shards
from pipeline.orchestrate.interval import as_utc, items_in_interval, partition_for_interval
from pipeline.orchestrate.storage import (
    merge_storage_options, storage_options_from_env, with_s3_defaults, without_secrets,
)
from pipeline.store import Output, commit_key, committed_videos, open_output
from pipeline.store.output import STAGING_DIR
from pipeline.store.lease import Lease
from schemas import TABLES
from schemas.plan import PlannedItem, ShardPlan
from schemas.run import Failure, PlannedShard, RunPlan, RunResult, ShardResult, ShardRun

log = logging.getLogger(__name__)
R = TypeVar("R")

PLANS_DIR = "_plans"
PLAN_FILE = "plan.json"
INPUTS_FILE = "inputs.txt"
RUN_RESULT_FILE = "run.result.json"
FAILURES_LOGGED = 20  # failed videos named in the log; every one is in its shard's result file
COUNTS = ("discovered", "ok", "failed", "skipped", "shards", "keyframes", "segments", "summaries")
# What a plan's configuration leaves to the machine that runs it: its model cache and the Ray it joins.
LOCAL_SETTINGS = ("cache_dir", "ray_address")


def run_key(run_id: str) -> str:
    """A run id (Airflow's hold ``:`` and ``+``) as one safe path segment."""
    key = re.sub(r"[^A-Za-z0-9._=-]+", "_", run_id).strip("._")
    if not key:
        raise ValueError(f"run id {run_id!r} has no usable characters")
    return key


def build_config(
    input_uri: str, output_uri: str, storage_options: Mapping[str, Any] | None = None, **settings: Any
) -> RunConfig:
    """A RunConfig whose storage options layer the S3 time limits, the environment, the caller's options
    and the config file's own ``storage_options`` (later wins)."""
    config = load_config(input_uri, output_uri, **settings)
    opts = merge_storage_options(storage_options_from_env(), storage_options, config.storage_options)
    return dataclasses.replace(config, storage_options=with_s3_defaults(opts, input_uri, output_uri))


def planned_config(config: RunConfig) -> dict[str, Any]:
    """What a plan records of its configuration: all of it but credentials and the machine's own settings."""
    values = {k: v for k, v in config_to_dict(config).items() if k not in LOCAL_SETTINGS}
    return {**values, "storage_options": without_secrets(values["storage_options"])}


def _write_text(fs, path: str, text: str) -> None:
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    fs.pipe_file(path, text.encode())


def list_and_shard(
    input_uri: str,
    output_uri: str,
    run_id: str,
    *,
    profile: str = "tiny",
    config_file: str | None = None,
    shard_size: int | None = None,
    force: bool = False,
    retry_failed: bool = False,
    storage_options: Mapping[str, Any] | None = None,
    interval: tuple[dt.datetime | str, dt.datetime | str] | None = None,
    layout: str = "auto",
    partition: str | None = None,
    replace_partition: bool = False,
) -> dict:
    """List the media (all of it, or what arrived in ``interval``), plan the pending shards and write
    their lists. An interval writes into its own partition (``partition_for_interval``) unless
    ``partition`` names one. With ``replace_partition`` every listed input is planned, its shards commit
    into the run's staging tables, and ``validate_and_publish`` replaces the partition with them in one
    commit per table: readers see the old partition until then, and a failed run leaves it whole.
    The plan holds the resolved configuration, which ``run_plan`` runs with: ``config_file`` is read here only.
    Returns URIs and counts: ``plan``, ``shards`` (how many), ``media``, ``pending``, ``skipped``, ``partition``."""
    if interval is not None and partition is None:
        partition = partition_for_interval(*interval)
    config = build_config(
        input_uri, output_uri, storage_options, profile=profile, config_file=config_file,
        shard_size=shard_size, force=force or None, retry_failed=retry_failed or None, partition=partition,
    )
    opts = config.storage_options
    if interval is None:
        items = discover(input_uri, opts)
    else:
        items = items_in_interval(input_uri, interval[0], interval[1], opts, layout)
    output = Output(output_uri, opts, partition)
    output.check_writable()
    # The run's shared lease, taken before planning; its run and validation join it (see pipeline.store.lease).
    Lease(output, run_key(run_id), shared=True).acquire()
    replace = bool(replace_partition and partition)
    plan_id = uuid.uuid4().hex[:8]
    version, committed = committed_videos(output)
    if replace:
        # A retried listing starts its replacement afresh: the staging of its earlier listings goes.
        for old in output.fs.glob(output.path(STAGING_DIR, f"{run_key(run_id)}*")):
            output.fs.rm(old, recursive=True)
        version, committed = -1, {}
    shards, skipped = plan_shards(
        items, committed, config.fingerprint(), config.shard_size, force=config.force,
        retry_failed=config.retry_failed,
    )

    plan_dir = posixpath.join(output.root, PLANS_DIR, run_key(run_id))
    if output.fs.exists(plan_dir):
        output.fs.rm(plan_dir, recursive=True)  # a retried listing replaces its earlier plan whole
    _write_text(output.fs, posixpath.join(plan_dir, INPUTS_FILE), "".join(f"{i.uri}\n" for i in items))
    planned = []
    for n, shard in enumerate(shards):
        path = posixpath.join(plan_dir, f"shard-{n:05d}.json")
        members = tuple(PlannedItem(i.uri, i.video_id, i.input_fingerprint, i.size) for i in shard.items)
        shard_plan = ShardPlan(shard.shard_id, members, config.fingerprint(), partition, version, replace, plan_id)
        _write_text(output.fs, path, shard_plan.to_json())
        planned.append(PlannedShard(output.fs.unstrip_protocol(path), shard.shard_id, len(shard.items)))
    plan = RunPlan(
        run_id=run_id,
        input_uri=input_uri,
        output_uri=output_uri,
        config_fingerprint=config.fingerprint(),
        profile=config.profile,
        partition=partition,
        interval=tuple(as_utc(t).isoformat() for t in interval) if interval else None,
        config_file=config_file,
        config=planned_config(config),
        force=config.force,
        retry_failed=config.retry_failed,
        shard_size=config.shard_size,
        media=len(items),
        skipped=skipped,
        replace_partition=replace,
        planned_version=version,
        plan_id=plan_id,
        shards=tuple(planned),
        planned_at=dt.datetime.now(dt.timezone.utc).isoformat(),
    )
    plan_path = posixpath.join(plan_dir, PLAN_FILE)
    _write_text(output.fs, plan_path, plan.to_json())
    pending = plan.pending
    log.info("%d media listed, %d pending in %d shard(s), %d already done", len(items), pending, len(shards), skipped)
    return {
        "plan": output.fs.unstrip_protocol(plan_path),
        "shards": len(planned),
        "media": len(items),
        "pending": pending,
        "skipped": skipped,
        "partition": partition,
    }


def run_plan(
    plan_uri: str,
    storage_options: Mapping[str, Any] | None = None,
    ray_address: str | None = None,
    cache_dir: str | None = None,
) -> dict:
    """Run every shard of the plan written by ``list_and_shard``, as written, in one pipeline
    (``pipeline.run.run_planned``; Ray: ``ray_address``, ``RAY_ADDRESS`` or a local one), with the
    configuration the plan holds; credentials come from ``storage_options`` and the environment. Shards an
    earlier try of the run committed are skipped. Writes each shard's ``ShardResult`` and the run's
    ``RunResult`` next to the plan and returns the latter as JSON values: ``totals`` (the counts),
    ``shards`` (each shard's outcome), ``tables`` and ``versions``."""
    base = merge_storage_options(storage_options_from_env(), storage_options)
    fs, plan_path = open_output(plan_uri, base)
    fs.invalidate_cache(posixpath.dirname(plan_path))  # an earlier try, elsewhere, may have written results
    plan = RunPlan.from_json(fs.cat_file(plan_path))
    if not plan.config:
        raise ConfigError(f"plan {plan_uri} holds no configuration (an older reelscope listed it): list the run again")
    opts = merge_storage_options(storage_options_from_env(), plan.config.get("storage_options"), storage_options)
    local = {"ray_address": ray_address, **({"cache_dir": cache_dir} if cache_dir else {})}
    config = config_from_dict({**plan.config, "storage_options": opts, **local})
    if config.fingerprint() != plan.config_fingerprint:
        raise ConfigError(f"plan {plan_uri} was made for configuration {plan.config_fingerprint}, but its settings "
                          f"give {config.fingerprint()} here (another reelscope version?): list the run again")
    plan_dir = posixpath.dirname(plan_path)
    shard_paths = [posixpath.join(plan_dir, posixpath.basename(s.uri)) for s in plan.shards]
    texts = fs.cat(shard_paths) if shard_paths else {}  # all at once: concurrent requests on object stores
    shard_plans = [ShardPlan.from_json(texts[p]) for p in shard_paths]
    if shard_plans:
        from pipeline.run import run_planned  # models, stages and Ray: only where shards actually run

        summary = run_planned(config, shard_plans, lease_owner=run_key(plan.run_id))
    else:
        summary = None
    result = _record_results(fs, plan, shard_paths, summary, Output(plan.output_uri, opts, plan.partition))
    fs.pipe_file(posixpath.join(plan_dir, RUN_RESULT_FILE), result.to_json().encode())
    failures = summary.failures if summary else []
    for uri, error in failures[:FAILURES_LOGGED]:
        log.warning("failed: %s: %s", uri, error)
    if len(failures) > FAILURES_LOGGED:
        log.warning("and %d more failed; each shard's result file names them", len(failures) - FAILURES_LOGGED)
    totals = result.totals
    log.info("run %s: %d shard(s) committed, %d committed before; %d video(s) ok, %d failed", plan.run_id,
             totals["shards"], sum(s.committed_before for s in result.shards), totals["ok"], totals["failed"])
    return result.to_dict()


def _record_results(fs, plan: RunPlan, shard_paths: list[str], summary, output: Output) -> RunResult:
    """Each shard's ``ShardResult`` written (a shard an earlier try committed keeps the one that try wrote),
    and the run's ``RunResult``; ``summary`` is None when the plan had no shard to run. Results are read and
    written all at once: a run may have thousands of shards on an object store."""
    counts = {k: getattr(summary, k, 0) for k in COUNTS}
    wall_s = round(summary.wall_s, 2) if summary else 0.0
    load_s = round(summary.stage_seconds.get("load models", 0.0), 2) if summary else 0.0
    skipped = set(summary.skipped_shards) if summary else set()
    commits = {c.shard_id: c for c in summary.commits} if summary else {}
    paths = {s.shard_id: result_path(p) for s, p in zip(plan.shards, shard_paths)}
    earlier_paths = [paths[s] for s in skipped]
    earlier = fs.cat(earlier_paths, on_error="omit") if earlier_paths else {}
    writes, shards = {}, []
    for planned in plan.shards:
        path = paths[planned.shard_id]
        if planned.shard_id in skipped:
            if path in earlier:
                result = ShardResult.from_json(earlier[path])
            else:  # the earlier try stopped between the commit and its result
                result = ShardResult(discovered=planned.videos, skipped=planned.videos)
                writes[path] = result.to_json().encode()
            shards.append(ShardRun(planned.shard_id, planned.videos, result.ok, result.failed, True))
            continue
        done = summary.by_shard[planned.shard_id]
        rows = commits[planned.shard_id].rows if planned.shard_id in commits else {}
        result = ShardResult(
            discovered=planned.videos, ok=done["ok"], failed=done["failed"], shards=1,
            keyframes=rows.get("keyframes", 0), segments=rows.get("segments", 0), summaries=rows.get("summaries", 0),
            wall_s=wall_s, load_s=load_s, failures=tuple(Failure(u, e) for u, e in done["failures"]),
        )
        writes[path] = result.to_json().encode()
        shards.append(ShardRun(planned.shard_id, planned.videos, result.ok, result.failed))
    if writes:
        fs.pipe(writes)
    key = commit_key(run_key(plan.run_id), plan.plan_id)
    committed_into = output.staging(key) if plan.replace_partition else output
    last = summary.commits[-1].versions if summary and summary.commits else {}
    return RunResult(
        run_id=plan.run_id, plan_id=plan.plan_id, totals={**counts, "wall_s": wall_s, "load_s": load_s},
        shards=tuple(shards), tables=table_uris(committed_into), versions=dict(last),
        pools={stage: dict(pool) for stage, pool in (summary.pools if summary else {}).items()},
    )


def table_uris(output: Output) -> dict[str, str]:
    """The four tables' URIs (``file://`` for local ones): what lineage and Airflow assets name them by."""
    return {t: output.fs.unstrip_protocol(output.path(t)) for t in TABLES}


def outcome_table(shards: list[Mapping[str, Any]]) -> str:
    """Each shard's outcome (``RunResult.shards`` as JSON values) as a fixed-width table, for logs."""
    row = "{:<18}{:>8}{:>8}{:>8}  {}".format
    lines = [row("shard", "videos", "ok", "failed", "committed before")]
    lines += [row(s["shard_id"], s["videos"], s["ok"], s["failed"], "yes" if s["committed_before"] else "no")
              for s in shards]
    return "\n".join(lines)


def read_record(uri: str, record: type[R], storage_options: Mapping[str, Any] | None = None) -> R:
    """The run record (``schemas.run``: a plan, a result, a manifest) at ``uri`` as it is now: other processes
    write them, and a listing this process cached (s3fs keeps them per filesystem) must not hide a new one."""
    fs, path = open_output(uri, storage_options)
    fs.invalidate_cache(path)
    return record.from_json(fs.cat_file(path))


def result_path(shard: str) -> str:
    """Where a shard's counts are written (a URI for a URI, a path for a path)."""
    return posixpath.splitext(shard)[0] + ".result.json"


def run_result_path(plan: str) -> str:
    """Where ``run_plan`` writes the run's ``RunResult`` (a URI for a URI, a path for a path)."""
    return posixpath.join(posixpath.dirname(plan), RUN_RESULT_FILE)
