"""list-and-shard and run-shard: the two halves of a fanned-out run.

``list_and_shard`` lists the media, decides what is pending with the same ``plan_shards`` the library run
uses, and writes one shard plan per planned shard under ``<output>/_plans/<run>/``::

    plan.json            what the run is (``schemas.run.RunPlan``): input, output, partition, profile, shard
                         plans (written last)
    inputs.txt           every listed input, one URI a line (what validation accounts for)
    shard-00000.json     one planned shard (``schemas.plan.ShardPlan``): its id, items and fingerprints
    shard-00000.result.json   ``schemas.run.ShardResult``: counts and failures, written by ``run_shard``

``run_shard`` executes a shard plan as written (``pipeline.run.run_planned``): it lists and plans nothing
again, so a retried or repeated shard rewrites the same files under the same id instead of adding rows.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
import posixpath
import re
import uuid
from typing import Any, Mapping

from pipeline.config import RunConfig, load_config
from pipeline.discover import Shard, discover, plan_shards
from pipeline.orchestrate.interval import as_utc, items_in_interval, partition_for_interval
from pipeline.orchestrate.storage import merge_storage_options, storage_options_from_env, with_s3_defaults
from pipeline.store import Output, committed_videos, open_output
from pipeline.store.output import STAGING_DIR
from pipeline.store.lease import Lease
from schemas.plan import PlannedItem, ShardPlan
from schemas.run import Failure, PlannedShard, RunPlan, ShardResult

log = logging.getLogger(__name__)

PLANS_DIR = "_plans"
PLAN_FILE = "plan.json"
INPUTS_FILE = "inputs.txt"
COUNTS = ("discovered", "ok", "failed", "skipped", "shards", "keyframes", "segments", "summaries")


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


def _write_text(fs, path: str, text: str) -> None:
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    fs.pipe_file(path, text.encode())


def _plan(items, committed: dict, config: RunConfig, max_shards: int) -> tuple[list[Shard], int, int]:
    size = config.shard_size

    def planned(size: int) -> tuple[list[Shard], int]:
        return plan_shards(
            items, committed, config.fingerprint(), size, force=config.force, retry_failed=config.retry_failed,
        )

    shards, skipped = planned(size)
    if len(shards) > max_shards:
        # Airflow caps the mapped tasks of one task (core.max_map_length); bigger shards keep a sweep of
        # any size within it, and the shards that already exist keep their members.
        old = {v.shard_id for v in committed.values()}
        kept = sum(s.shard_id in old for s in shards)
        fresh = sum(len(s.items) for s in shards if s.shard_id not in old)
        if kept >= max_shards:
            raise ValueError(f"{kept} existing shards to redo exceed the limit of {max_shards} mapped tasks")
        size = max(size, math.ceil(fresh / (max_shards - kept)))
        log.warning("%d shards exceed the limit of %d; using %d videos per shard", len(shards), max_shards, size)
        shards, skipped = planned(size)
    return shards, skipped, size


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
    max_shards: int = 1024,
) -> dict:
    """List the media (all of it, or what arrived in ``interval``), plan the pending shards and write
    their lists. An interval writes into its own partition (``partition_for_interval``) unless
    ``partition`` names one. With ``replace_partition`` every listed input is planned, its shards commit
    into the run's staging tables, and ``validate_and_publish`` replaces the partition with them in one
    commit per table: readers see the old partition until then, and a failed run leaves it whole.
    Returns URIs and counts: ``plan``, ``shards``, ``media``, ``pending``, ``skipped``, ``partition``."""
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
    # The run's shared lease, taken before planning; its shard tasks join it (see pipeline.store.lease).
    Lease(output, run_key(run_id), shared=True).acquire()
    replace = bool(replace_partition and partition)
    plan_id = uuid.uuid4().hex[:8]
    version, committed = committed_videos(output)
    if replace:
        # A retried listing starts its replacement afresh: the staging of its earlier listings goes.
        for old in output.fs.glob(output.path(STAGING_DIR, f"{run_key(run_id)}*")):
            output.fs.rm(old, recursive=True)
        version, committed = -1, {}
    shards, skipped, size = _plan(items, committed, config, max_shards)

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
        force=config.force,
        retry_failed=config.retry_failed,
        shard_size=size,
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
        "shards": [s.uri for s in planned],
        "media": len(items),
        "pending": pending,
        "skipped": skipped,
        "partition": partition,
    }


def run_shard(
    shard_uri: str,
    storage_options: Mapping[str, Any] | None = None,
    ray_address: str | None = None,
    cache_dir: str | None = None,
) -> dict:
    """Run one shard plan written by ``list_and_shard``, as written (``pipeline.run.run_planned``; Ray:
    ``ray_address``, ``RAY_ADDRESS`` or a local one). Returns the counts; ``<shard>.result.json`` gets them
    too, with the failed inputs and their errors (kept out of the returned counts, which travel through
    XCom)."""
    from pipeline.run import run_planned  # models, stages and Ray: only where a shard actually runs

    base = merge_storage_options(storage_options_from_env(), storage_options)
    fs, shard_path = open_output(shard_uri, base)
    plan = RunPlan.from_json(fs.cat_file(posixpath.join(posixpath.dirname(shard_path), PLAN_FILE)))
    shard = ShardPlan.from_json(fs.cat_file(shard_path))
    config = build_config(
        shard_uri, plan.output_uri, base, profile=plan.profile, config_file=plan.config_file,
        shard_size=plan.shard_size, partition=plan.partition, ray_address=ray_address, cache_dir=cache_dir,
    )
    summary = run_planned(config, [shard], lease_owner=run_key(plan.run_id))
    result = ShardResult(
        **{k: getattr(summary, k) for k in COUNTS}, wall_s=round(summary.wall_s, 2),
        load_s=round(summary.stage_seconds.get("load models", 0.0), 2),
        failures=tuple(Failure(u, e) for u, e in summary.failures),
    )
    fs.pipe_file(result_path(shard_path), result.to_json().encode())
    log.info("shard %s: %d ok, %d failed, %d skipped", shard_uri, summary.ok, summary.failed, summary.skipped)
    return result.counts()


def result_path(shard: str) -> str:
    """Where a shard's counts are written (a URI for a URI, a path for a path)."""
    return posixpath.splitext(shard)[0] + ".result.json"
