"""The entry point: discover → skip done → shard → Ray stages → write shard → commit.

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
from pipeline.lease import Lease, new_owner
from pipeline.repair import repair
from pipeline.rows import build_tables
from pipeline.stages.caption import Blip2Captioner
from pipeline.stages.decode import MediaDecoder
from pipeline.stages.embed import ClipEmbedder
from pipeline.stages.model import ModelStage
from pipeline.stages.summarize import LlmSummarizer
from pipeline.stages.transcribe import WhisperTranscriber
from pipeline.tables import Output
from pipeline.task import VideoTask
from schemas import ROLES
from schemas.manifest import ModelRef, ShardManifest, StageStats, VideoEntry
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
    manifests: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def build_stages(config: RunConfig) -> tuple[MediaDecoder, list[ModelStage]]:
    common = {"cache_dir": config.cache_dir, "storage_options": dict(config.storage_options)}
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
    decoder = MediaDecoder(keyframes=config.keyframes, limits=config.limits, storage_options=dict(config.storage_options))
    return decoder, stages


def plan(config: RunConfig, output: Output | None = None) -> tuple[Output, list[MediaItem], list[Shard], int]:
    """Discover inputs and decide which shards to run; cheap, touches no model."""
    output = output or Output(config.output, config.storage_options, config.partition)
    items = discover(config.input, config.storage_options)
    shards, skipped = plan_shards(
        list(items), output.manifests(), config.fingerprint(), config.shard_size, force=config.force,
        retry_failed=config.retry_failed,
    )
    return output, list(items), shards, skipped


def run(config: RunConfig, progress: Callable[[str, int, int], None] | None = None) -> RunSummary:
    """Process every pending video of the config's input into the output tables.

    ``progress(description, done_videos, total_videos)`` is called as work advances.
    """
    started = time.perf_counter()
    # Planned and written under the output's lease: a run planned beside another would duplicate its rows.
    with Lease(Output(config.output, config.storage_options, config.partition), new_owner("run")) as lease:
        repair(lease.output, lease_free=True)  # no one else writes now: what killed runs left can go
        output, items, shards, skipped = plan(config, lease.output)
        return _execute(config, output, shards, len(items), skipped, started, progress)


def planned_shard(plan: ShardPlan) -> Shard:
    """The shard a plan describes, its items as they were when planned."""
    items = tuple(MediaItem(i.uri, i.video_id, i.size, None, i.input_fingerprint) for i in plan.items)
    return Shard(plan.shard_id, items)


def run_planned(
    config: RunConfig, plan: ShardPlan, progress: Callable[[str, int, int], None] | None = None,
    lease_owner: str | None = None,
) -> RunSummary:
    """Process one shard exactly as planned: its items, under its id, into its partition; nothing is listed
    or planned again. A configuration other than the one planned for is refused, since the shard's rows
    would then not be what the plan promised. ``lease_owner``: the planned run's key, whose shared lease the
    shard joins (``pipeline.lease``); without one the shard takes the lease for itself."""
    started = time.perf_counter()
    if plan.config_fingerprint != config.fingerprint():
        raise ConfigError(
            f"shard {plan.shard_id} was planned for configuration {plan.config_fingerprint}, not "
            f"{config.fingerprint()}: models or settings changed since; plan the run again"
        )
    output = Output(config.output, config.storage_options, plan.partition)
    shared = lease_owner is not None
    with Lease(output, lease_owner or new_owner("run"), shared=shared, joins=shared):
        return _execute(config, output, [planned_shard(plan)], len(plan.items), 0, started, progress)


def _execute(
    config: RunConfig, output: Output, shards: list[Shard], discovered: int, skipped: int, started: float,
    progress: Callable[[str, int, int], None] | None,
) -> RunSummary:
    output.check_writable()
    summary = RunSummary(discovered=discovered, skipped=skipped)
    todo = sum(len(s.items) for s in shards)
    log.info("%d media found, %d to process in %d shard(s), %d already done", discovered, todo, len(shards), skipped)
    if not shards:
        summary.wall_s = time.perf_counter() - started
        return summary
    ensure_ray(config.ray_address)
    decoder, stages = build_stages(config)
    if progress:
        progress("loading models", 0, todo)
    executor = executor_for(
        decoder, stages, device=config.device, idle_s=config.models_idle_s, limits=config.limits
    )
    done = 0

    def on_stage(index: int, name: str) -> None:
        if progress:
            progress(f"shard {index + 1}/{len(shards)}: {name}", done, todo)

    batches = [[VideoTask(i.video_id, i.uri, i.input_fingerprint, i.size) for i in s.items] for s in shards]
    names = {s.name: s.model_name for s in stages}
    for n, (shard, tasks) in enumerate(zip(shards, executor.run_shards(batches, on_stage)), 1):
        write_start = time.perf_counter()
        dim = executor.dims.get("embedding")  # None: no video got as far as a model
        manifest = _write(output, config, shard, tasks, names, dim)
        executor.stage_seconds["write"] = executor.stage_seconds.get("write", 0.0) + time.perf_counter() - write_start
        summary.manifests.append(output.manifest_path(shard.shard_id))
        summary.shards += 1
        for t in tasks:
            if t.ok:
                summary.ok += 1
            else:
                summary.failed += 1
                summary.failures.append((t.uri, t.error))
        summary.keyframes += manifest.files["keyframes"].rows
        summary.segments += manifest.files["segments"].rows
        summary.summaries += manifest.files["summaries"].rows
        done += len(tasks)
        if progress:
            progress(f"shard {n}/{len(shards)}: written", done, todo)
    summary.stage_seconds = dict(executor.stage_seconds)
    summary.wall_s = time.perf_counter() - started
    return summary


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


def _write(
    output: Output, config: RunConfig, shard: Shard, tasks: list[VideoTask], names: dict[str, str],
    dim: int | None,
) -> ShardManifest:
    """Commit one shard. ``dim`` is the embedding width, None when no model was needed (every video failed to
    decode): the shard then has no keyframes of its own, and takes the width of the shards committed under
    this configuration (whose rows a partial redo carries over), or none at all."""
    fingerprint = config.fingerprint()
    if dim is None:
        same = (m.embedding_dim for m in output.manifests() if m.config_fingerprint == fingerprint)
        dim = next((d for d in same if d), None)
    now = dt.datetime.now(dt.timezone.utc)
    tables = build_tables(
        tasks,
        shard_id=shard.shard_id,
        config_fingerprint=fingerprint,
        embedding_dim=dim or 1,
        model_names=names,
        processed_at=now,
    )
    manifest = ShardManifest(
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
        videos=tuple(
            VideoEntry(t.video_id, t.input_fingerprint, t.uri, "ok" if t.ok else "failed") for t in tasks
        ),
        stages=stage_stats(tasks),
    )
    return output.write_shard(shard.shard_id, tables, manifest)
