"""A stage's actor pool, owned by one run: its workers, which one gets the next batch, what they did.

Actors are plain (not named, not detached): they belong to the driver that made them and end with it or
when the run stops them. A run may hand its pools to the next run of the same process (``park``/``adopt``),
which is how tests and notebooks keep models loaded; no other driver ever sees them.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from pipeline.executor.actor import Ready, StageActor, threads_for
from pipeline.stages.base import Stage

DEPTH = 2  # calls queued at an actor at once: the next waits there, not for the driver to notice the last end


@dataclass(eq=False)
class Worker:
    """One actor of a pool, as the driver sees it."""

    handle: object
    setup_ref: object
    ready: Ready | None = None
    in_flight: int = 0
    busy_until: float = 0.0  # when the calls queued at it are due to be done (time limits start from there)
    busy_s: float = 0.0  # seconds its model worked, as it reported
    ready_at: float | None = None
    gone_at: float | None = None
    killed_for: object = None  # the call whose time limit ran out, when the run stopped it for that

    @property
    def node(self) -> str | None:
        return self.ready.node if self.ready else None


@dataclass(eq=False)
class StagePool:
    stage: Stage
    device: str
    cpus: float  # per actor, as Ray schedules it
    gpus: float
    workers: list[Worker] = field(default_factory=list)
    retired: list[Worker] = field(default_factory=list)  # gone workers, for the busy share
    videos: int = 0  # videos its calls finished
    peak: int = 0
    nodes: set = field(default_factory=set)  # where its calls ran

    @property
    def name(self) -> str:
        return self.stage.name

    def add(self) -> Worker:
        import ray

        from pipeline.executor.cluster import worker_runtime_env

        actor = ray.remote(StageActor).options(
            num_cpus=self.cpus, num_gpus=self.gpus, max_restarts=0, runtime_env=worker_runtime_env()
        ).remote(self.stage, self.device, threads_for(self.cpus))
        worker = Worker(actor, actor.setup.remote())
        self.workers.append(worker)
        self.peak = max(self.peak, len(self.workers))
        return worker

    def pick(self, min_free: int = 1) -> Worker | None:
        """The least-busy ready worker with room for another call (``min_free``: DEPTH for an idle one)."""
        ready = [w for w in self.workers if w.ready and w.killed_for is None and w.in_flight <= DEPTH - min_free]
        return min(ready, key=lambda w: (w.in_flight, w.busy_s), default=None)

    def drop(self, worker: Worker, kill: bool = True) -> None:
        """Take a worker out of the pool (dead, retired or stopped)."""
        import ray

        if worker in self.workers:
            self.workers.remove(worker)
            worker.gone_at = time.perf_counter()
            self.retired.append(worker)
        if kill:
            ray.kill(worker.handle)

    def retire_idle(self, keep: int) -> None:
        """Stop idle workers until ``keep`` are left (or no idle one is)."""
        for worker in [w for w in self.workers if w.in_flight == 0]:
            if len(self.workers) <= keep:
                break
            self.drop(worker)

    def stop(self) -> None:
        for worker in list(self.workers):
            self.drop(worker)

    def busy_share(self, now: float) -> float:
        """Of the seconds its workers were up (ready until gone or now), the share their models worked."""
        up = sum((w.gone_at or now) - w.ready_at for w in [*self.workers, *self.retired] if w.ready_at is not None)
        busy = sum(w.busy_s for w in [*self.workers, *self.retired])
        return busy / up if up > 0 else 0.0

    def cost_s(self) -> float | None:
        """Measured model seconds per video, once it has finished some."""
        busy = sum(w.busy_s for w in [*self.workers, *self.retired])
        return busy / self.videos if self.videos else None
