"""The entry point: discover → skip done → shard → Ray stages → commit each shard (``pipeline.store``).

``run(config)`` is what the CLI, the Airflow operators and Ray Jobs call.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from pipeline.config import PIPELINE_VERSION, ConfigError, RunConfig
from pipeline.discover import MediaItem, Shard, discover, plan_shards
from pipeline.executor import ensure_ray, executor_for
from pipeline.rows import build_tables
from pipeline.stages.caption import Blip2Captioner
from pipeline.stages.decode import MediaDecoder
from pipeline.stages.embed import ClipEmbedder
from pipeline.stages.model import ModelStage
from pipeline.stages.summarize import LlmSummarizer
from pipeline.stages.transcribe import WhisperTranscriber
from pipeline.store import Output, commit_key, commit_shard, committed_videos, read_commits, shard_committed
from pipeline.store.lease import Lease, new_owner
from pipeline.task import VideoTask
from schemas import ROLES
from schemas.commit import CommitRecord, ModelRef, StageStats
from schemas.plan import ShardPlan

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    discovered: int = 0
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    shards: int = 0
    keyframes: int = 0
    segments: int = 0
    summaries: int = 0
    wall_s: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (uri, error)
    commits: list[CommitRecord] = field(default_factory=list)
    skipped_shards: list[str] = field(default_factory=list)  # shard ids committed already by this run
    # shard id -> what its commit held: {"ok": n, "failed": n, "failures": [(uri, error)]}
    by_shard: dict[str, dict] = field(default_factory=dict)
    pools: dict[str, dict] = field(default_factory=dict)  # per stage: actors, videos, busy share, nodes used

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def build_stages(config: RunConfig) -> tuple[MediaDecoder, list[ModelStage]]:
    """The stages, as they travel to Ray workers: storage options without credentials (those reach the
    workers through the runtime environment: ``pipeline.executor.cluster.ensure_ray``), and the model cache
    the user gave, else "" (each node's own)."""
    from pipeline.orchestrate.storage import without_secrets

    options = without_secrets(dict(config.storage_options))
    common = {"cache_dir": config.cache_dir or "", "storage_options": options}
    m = config.models
    stages: list[ModelStage] = [
        WhisperTranscriber(spec=m.asr, **common),
        Blip2Captioner(spec=m.caption, **common),
        ClipEmbedder(spec=m.embedding, **common),
        LlmSummarizer(spec=m.summary, **common),
    ]
    for stage in stages:
        if config.device == "cpu":
            stage.resources = dataclasses.replace(stage.resources, gpus=0.0)
        if stage.spec.stage_batch_size:
            stage.batch_size = stage.spec.stage_batch_size
    decoder = MediaDecoder(keyframes=config.keyframes, limits=config.limits, storage_options=dict(options))
    return decoder, stages


def plan(config: RunConfig, output: Output | None = None) -> tuple[Output, list[MediaItem], list[Shard], int, int]:
    """Discover inputs and decide which shards to run; cheap, touches no model. Returns the output, the
    items, the shards, how many items are done already, and the ``videos`` version planned against."""
    output = output or Output(config.output, config.storage_options, config.partition)
    output.check_layout()
    items = discover(config.input, config.storage_options)
    version, held = committed_videos(output)
    shards, skipped = plan_shards(
        list(items), held, config.fingerprint(), config.shard_size, force=config.force,
        retry_failed=config.retry_failed,
    )
    return output, list(items), shards, skipped, version


def run(config: RunConfig, progress: Callable[[str, int, int], None] | None = None) -> RunSummary:
    """Process every pending video of the config's input into the output tables.

    ``progress(description, done_videos, total_videos)`` is called as work advances.
    """
    started = time.perf_counter()
    # Under the output's lease, so that two runs do not do the same work; the commits are safe without it.
    with Lease(Output(config.output, config.storage_options, config.partition), new_owner("run")) as lease:
        output, items, shards, skipped, version = plan(config, lease.output)
        try:
            return _execute(config, output, shards, len(items), skipped, started, progress, lease, version,
                            lease.owner)
        except KeyboardInterrupt as exc:
            # What the log holds, not what was reported: a signal may land between a commit and its report.
            exc.committed = sum(c.run == lease.owner for c in read_commits(output))
            raise


def planned_shard(plan: ShardPlan) -> Shard:
    """The shard a plan describes, its items as they were when planned."""
    items = tuple(MediaItem(i.uri, i.video_id, i.size, None, i.input_fingerprint) for i in plan.items)
    return Shard(plan.shard_id, items)


def run_planned(
    config: RunConfig, plans: list[ShardPlan], progress: Callable[[str, int, int], None] | None = None,
    lease_owner: str | None = None,
) -> RunSummary:
    """Process shards exactly as planned, all in one pipeline: their items, under their ids, into their
    partition (or their run's staging tables, for a partition replacement); nothing is listed or planned
    again. A configuration other than the one planned for is refused, since the rows would then not be
    what the plan promised. Shards this run committed already (a retried task or job) are skipped.
    ``lease_owner``: the planned run's key, whose shared lease the run joins (``pipeline.store.lease``) and
    whose commits it makes. The plans must share one partition and listing (those of one ``RunPlan``)."""
    started = time.perf_counter()
    if not plans:
        return RunSummary(wall_s=time.perf_counter() - started)
    first = plans[0]
    for plan in plans:
        if plan.config_fingerprint != config.fingerprint():
            raise ConfigError(
                f"shard {plan.shard_id} was planned for configuration {plan.config_fingerprint}, not "
                f"{config.fingerprint()}: models or settings changed since; plan the run again"
            )
        if (plan.partition, plan.staging, plan.plan_id) != (first.partition, first.staging, first.plan_id):
            raise ValueError("shard plans of different runs or partitions cannot run together")
    target = Output(config.output, config.storage_options, first.partition)
    shared = lease_owner is not None
    with Lease(target, lease_owner or new_owner("run"), shared=shared, joins=shared) as lease:
        key = commit_key(lease.owner, first.plan_id)
        output = target.staging(key) if first.staging else target
        todo = [p for p in plans if not shard_committed(output, key, p.shard_id)]
        done = [p for p in plans if p not in todo]
        for plan in done:
            log.info("shard %s was committed by this run already; skipping it", plan.shard_id)
        discovered = sum(len(p.items) for p in plans)
        skipped = sum(len(p.items) for p in done)
        summary = _execute(config, output, [planned_shard(p) for p in todo], discovered, skipped, started,
                           progress, lease, min(p.planned_version for p in plans), key)
        summary.skipped_shards = [p.shard_id for p in done]
        return summary


def _execute(
    config: RunConfig, output: Output, shards: list[Shard], discovered: int, skipped: int, started: float,
    progress: Callable[[str, int, int], None] | None, lease: Lease, planned_version: int, run_key: str,
) -> RunSummary:
    output.check_writable()
    summary = RunSummary(discovered=discovered, skipped=skipped)
    todo = sum(len(s.items) for s in shards)
    log.info("%d media found, %d to process in %d shard(s), %d already done", discovered, todo, len(shards), skipped)
    if not shards:
        summary.wall_s = time.perf_counter() - started
        return summary
    from pipeline.executor.cluster import check_reachable
    from pipeline.orchestrate.storage import split_secrets

    ensure_ray(config.ray_address, env_vars=split_secrets(config.storage_options)[1])
    check_reachable(config.input, [i.uri for s in shards for i in s.items])
    decoder, stages = build_stages(config)
    if progress:
        progress("loading models", 0, todo)
    executor = executor_for(decoder, stages, device=config.device, limits=config.limits)
    try:
        _commit_shards(executor, config, output, shards, summary, progress, lease, planned_version, run_key)
    except BaseException:
        executor.stop()
        raise
    # A finished run leaves its pools to this process's next run with the same models (none other sees them).
    executor.stop(park=True)
    summary.stage_seconds = dict(executor.stage_seconds)
    summary.wall_s = time.perf_counter() - started
    return summary


def _commit_shards(
    executor, config: RunConfig, output: Output, shards: list[Shard], summary: RunSummary,
    progress: Callable[[str, int, int], None] | None, lease: Lease, planned_version: int, run_key: str,
) -> None:
    """Each shard committed as the executor hands it over, in order."""
    todo, done = sum(len(s.items) for s in shards), 0

    def on_stage(index: int, name: str) -> None:
        if progress:
            progress(f"shard {index + 1}/{len(shards)}: {name}", done, todo)

    batches = [[VideoTask(i.video_id, i.uri, i.input_fingerprint, i.size) for i in s.items] for s in shards]
    names = {s.name: s.model_name for s in executor.model_stages}
    for n, (shard, tasks) in enumerate(zip(shards, executor.run_shards(batches, on_stage)), 1):
        write_start = time.perf_counter()
        dim = executor.dims.get("embedding")  # None: no video got as far as a model
        record = _commit(output, config, shard, tasks, names, dim, run_key, planned_version)
        executor.add_seconds("write", time.perf_counter() - write_start)
        _count(summary, shard, tasks, record)
        done += len(tasks)
        if progress:
            progress(f"shard {n}/{len(shards)}: committed", done, todo)
        lease.check()  # another run took the output over: what is committed stays, the rest is left to it
    summary.pools = executor.report()


def _count(summary: RunSummary, shard: Shard, tasks: list[VideoTask], record: CommitRecord | None) -> None:
    summary.shards += 1
    failures = [(t.uri, t.error) for t in tasks if not t.ok]
    summary.by_shard[shard.shard_id] = {"ok": len(tasks) - len(failures), "failed": len(failures), "failures": failures}
    summary.ok += len(tasks) - len(failures)
    summary.failed += len(failures)
    summary.failures.extend(failures)
    if record is not None:
        summary.commits.append(record)
        summary.keyframes += record.rows["keyframes"]
        summary.segments += record.rows["segments"]
        summary.summaries += record.rows["summaries"]


STAGES = ("decode", *ROLES)


def stage_stats(tasks: list[VideoTask]) -> dict[str, StageStats]:
    """Per stage: the videos it took in, how many came out ok, the failures it caused by reason, seconds."""
    stats = {}
    for stage in STAGES:
        taken = [t for t in tasks if stage in t.seconds]
        failed = Counter(t.error[len(stage) + 2:][:120] for t in taken if t.error and t.error.startswith(f"{stage}: "))
        stats[stage] = StageStats(
            len(taken), sum(t.ok for t in taken), dict(sorted(failed.items())),
            round(sum(t.seconds[stage] for t in taken), 3),
        )
    return stats


def _commit(
    output: Output, config: RunConfig, shard: Shard, tasks: list[VideoTask], names: dict[str, str],
    dim: int | None, run_key: str, planned_version: int,
) -> CommitRecord | None:
    """Commit one shard. ``dim`` is the embedding width, None when no model was needed (every video failed to
    decode): the shard then has no keyframes and records no width."""
    now = dt.datetime.now(dt.timezone.utc)
    fingerprint = config.fingerprint()
    tables = build_tables(
        tasks, shard_id=shard.shard_id, config_fingerprint=fingerprint, embedding_dim=dim or 1,
        model_names=names, processed_at=now,
    )
    record = CommitRecord(
        run=run_key,
        shard_id=shard.shard_id,
        pipeline_version=PIPELINE_VERSION,
        config_fingerprint=fingerprint,
        profile=config.profile,
        models=names,
        # How to load each model again (search embeds queries with the very embedder of the keyframes),
        # found by the name the tables record (``embedding_model``...).
        model_refs={
            role: ModelRef(spec.ref, names[role], spec.revision, spec.endpoint)
            for role, spec in ((f.name, getattr(config.models, f.name)) for f in dataclasses.fields(config.models))
        },
        embedding_dim=dim,
        committed_at=now.isoformat(),
        stages=stage_stats(tasks),
    )
    return commit_shard(output, tables, record, planned_version=planned_version)
