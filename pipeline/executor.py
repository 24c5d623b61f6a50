"""The Ray executor: knows the cluster; stages do not.

Decode runs as Ray tasks (CPU, scheduled as cores free up); each model stage is a pool of actors sized to
the GPUs there are (one actor per stage on a CPU-only cluster), created once per run so models load once.
Within a shard the model stages run one after another, each spreading its batches over its pool, while
the next shard decodes.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

from pipeline.stages.base import Stage
from pipeline.task import VideoTask

log = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the whole run stops, since every video would fail the same way."""


def ensure_ray(address: str | None = None, object_store_bytes: int = 2 * 1024**3) -> None:
    """Join a cluster (``address`` or ``RAY_ADDRESS``) or start a local Ray, unless one is already up."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
    else:
        ray.init(
            num_cpus=os.cpu_count(),
            object_store_memory=object_store_bytes,
            include_dashboard=False,
            logging_level=logging.WARNING,
        )


def _set_threads(cpus: float, device: str) -> None:
    import torch

    # Ray pins OMP threads to the actor's (fractional, so 1) CPU count; stages run one at a time within a
    # shard, so a CPU-only model actor may use every core of its node.
    torch.set_num_threads(max(1, int(cpus)) if device == "cuda" else os.cpu_count() or 1)


class _StageActor:
    def __init__(self, stage: Stage, device: str):
        self.stage = stage
        self.device = device

    def setup(self) -> str:
        from transformers.utils import logging as hf_logging

        # Per-load progress bars from every actor would drown the run's own progress.
        hf_logging.disable_progress_bar()
        _set_threads(self.stage.resources.cpus, self.device)
        self.stage.setup(self.device)
        return self.stage.name

    def describe(self) -> dict:
        return {"name": getattr(self.stage, "model_name", None), "dim": getattr(getattr(self.stage, "model", None), "dim", None)}

    def process_batch(self, tasks: list[VideoTask]) -> list[VideoTask]:
        return self.stage.process_batch(tasks)


def _run_cpu_stage(stage: Stage, tasks: list[VideoTask]) -> list[VideoTask]:
    return stage.process_batch(tasks)


@dataclass
class RayExecutor:
    decoder: Stage
    model_stages: list[Stage]
    device: str = "auto"
    stage_seconds: dict[str, float] = field(default_factory=dict)

    def start(self) -> None:
        import ray

        gpus = int(ray.cluster_resources().get("GPU", 0))
        device = self.device if self.device != "auto" else ("cuda" if gpus else "cpu")
        if device == "cuda" and not gpus:
            raise ModelLoadError("device=cuda was asked for, but the Ray cluster has no GPU")
        self.device = device
        remote_actor = ray.remote(_StageActor)
        self._decode = ray.remote(_run_cpu_stage).options(num_cpus=self.decoder.resources.cpus)
        self.pools = {}
        for stage in self.model_stages:
            n = max(1, gpus) if device == "cuda" else 1
            opts = {"num_cpus": stage.resources.cpus, "num_gpus": stage.resources.gpus if device == "cuda" else 0}
            self.pools[stage.name] = [remote_actor.options(**opts).remote(stage, device) for _ in range(n)]
        start = time.perf_counter()
        pending = {a.setup.remote(): stage for stage in self.model_stages for a in self.pools[stage.name]}
        for ref, stage in pending.items():
            try:
                ray.get(ref)
            except Exception as exc:
                self.stop()
                cause = getattr(exc, "cause", None) or exc
                raise ModelLoadError(
                    f"cannot load the {stage.name} model {getattr(stage, 'spec', None) and stage.spec.ref!r}: "
                    f"{cause.__class__.__name__}: {str(cause).strip().splitlines()[0] if str(cause).strip() else ''}"
                ) from None
        self.stage_seconds["load models"] = time.perf_counter() - start
        self.model_info = {name: ray.get(actors[0].describe.remote()) for name, actors in self.pools.items()}
        log.info("models loaded on %s in %.1f s", device, self.stage_seconds["load models"])

    def stop(self) -> None:
        import ray

        for actors in getattr(self, "pools", {}).values():
            for actor in actors:
                ray.kill(actor)
        self.pools = {}

    def run_shards(
        self, shards: list[list[VideoTask]], on_stage: Callable[[int, str], None] | None = None
    ) -> Iterator[list[VideoTask]]:
        """Each shard's finished tasks, in order.

        The next shard decodes (CPU tasks) while this one is in the model stages, so the models do not wait
        for decoding between shards; at most two shards' decoded media are held at once.
        """
        import ray

        decoding = self._decode_async(shards[0]) if shards else []
        for n, tasks in enumerate(shards):
            if on_stage:
                on_stage(n, self.decoder.name)
            start = time.perf_counter()
            decoded = [t for batch in ray.get(decoding) for t in batch]
            self._add(self.decoder.name, start)
            decoding = self._decode_async(shards[n + 1]) if n + 1 < len(shards) else []
            yield self._model_stages(decoded, (lambda name, n=n: on_stage(n, name)) if on_stage else None)

    def _decode_async(self, tasks: list[VideoTask]) -> list:
        return [self._decode.remote(self.decoder, [t]) for t in tasks]

    def _model_stages(self, tasks: list[VideoTask], on_stage: Callable[[str], None] | None) -> list[VideoTask]:
        from ray.util import ActorPool

        by_id = {t.video_id: t for t in tasks}
        for stage in self.model_stages:
            todo = [t for t in by_id.values() if stage.wants(t)]
            if not todo:
                continue
            if on_stage:
                on_stage(stage.name)
            start = time.perf_counter()
            batches = [todo[i : i + stage.batch_size] for i in range(0, len(todo), stage.batch_size)]
            pool = ActorPool(self.pools[stage.name])
            for batch in pool.map_unordered(lambda actor, batch: actor.process_batch.remote(batch), batches):
                by_id.update((t.video_id, t) for t in batch)
            self._add(stage.name, start)
        return [by_id[t.video_id] for t in tasks]

    def _add(self, name: str, start: float) -> None:
        self.stage_seconds[name] = self.stage_seconds.get(name, 0.0) + time.perf_counter() - start

    def alive(self) -> bool:
        import ray

        try:
            ray.get([actors[0].describe.remote() for actors in self.pools.values()], timeout=30)
        except Exception:
            return False
        return True


_warm: tuple[str, RayExecutor] | None = None


def executor_for(decoder: Stage, model_stages: list[Stage], device: str = "auto") -> RayExecutor:
    """A started executor for these stages, reusing the loaded actors of the previous run when they match.

    Loading models costs more than a small shard; a process that runs many (tests, a notebook, an Airflow
    worker running shards in-process) keeps one warm set of actors. A different set replaces it, so
    actors never pile up and starve the decode tasks of CPUs.
    """
    global _warm
    key = repr((model_stages, device))
    if _warm is not None and _warm[0] == key and _warm[1].alive():
        executor = _warm[1]
        executor.decoder = decoder
        executor.stage_seconds = {}
        return executor
    if _warm is not None:
        _warm[1].stop()
        _warm = None
    executor = RayExecutor(decoder, model_stages, device=device)
    executor.start()
    _warm = (key, executor)
    return executor
