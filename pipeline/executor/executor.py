"""The Ray executor: knows the cluster; stages do not.

A run owns one actor pool per model stage (``pools``), sized to the cluster's live nodes and resized by
measured cost per video (``sizing``); decode runs as Ray tasks on CPUs kept for it. ``run_shards`` streams
the videos through (``loop``). A lost node, a worker that dies or runs over its time limit, costs the
videos it held a retry (``recovery``), never the run.
"""
from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

from pipeline.config import Limits
from pipeline.executor.actor import decode
from pipeline.executor.cluster import worker_runtime_env
from pipeline.executor.loop import ModelLoadError, Scheduler
from pipeline.executor.pools import StagePool
from pipeline.executor.sizing import Demand, Node, alive_nodes, bottleneck_s, decode_slots, decode_reserve, widths
from pipeline.stages.base import Stage
from pipeline.task import VideoTask

log = logging.getLogger(__name__)

REBALANCE_S = 5.0  # how often the pools' widths are checked against measured costs
SETUP_DEATHS = 3  # workers of a stage that may die loading their model (a lost node aside) before the run stops

# Pools a finished run of this process left for its next run with the same stages (tests, notebooks): no
# other driver can reach them, and a run with other stages ends them first so they hold no resources.
_parked: dict[tuple[str, str], StagePool] = {}


@dataclass
class RayExecutor:
    decoder: Stage
    model_stages: list[Stage]
    device: str = "auto"
    limits: Limits = field(default_factory=Limits)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    rebalance_s: float = REBALANCE_S
    max_actors: int | None = None  # per stage, at most (None: as many as the cluster holds and the run can use)
    cpu_actor_cpus: float = 1.0  # on a CPU-only cluster, the CPUs (and torch threads) of a model actor

    def start(self) -> None:
        """Make each stage's pool (one worker each to begin with, loading its model while the first videos
        decode), or take over the pools an earlier run of this process left with the same stages."""
        import ray

        nodes = alive_nodes()
        gpus = sum(n.gpus for n in nodes)
        device = self.device if self.device != "auto" else ("cuda" if gpus else "cpu")
        if device == "cuda" and not gpus:
            raise ModelLoadError("device=cuda was asked for, but the Ray cluster has no GPU")
        self.auto = self.device == "auto"  # then the pools follow the GPUs there are (a GPU node lost, or one back)
        self.device = device
        # One retry: a worker that dies twice on the same video will die every time.
        self.decode_fn = ray.remote(decode).options(
            num_cpus=self.decoder.resources.cpus, max_retries=1, runtime_env=worker_runtime_env()
        )
        self.nodes = {n.id: n for n in nodes}
        self.slots = decode_slots(nodes, self.decoder.resources.cpus)
        self.setups: dict[object, tuple[StagePool, object]] = {}
        self.setup_deaths: dict[str, int] = {}
        self.dims: dict[str, int | None] = {}
        self.decode_nodes: set[str] = set()
        self.news: list[tuple[set[str], set[str]]] = []  # nodes lost and joined, not yet told
        self.caps = [1] * len(self.model_stages)
        self.target = {stage.name: 1 for stage in self.model_stages}
        self.last_rebalance = time.perf_counter()
        keys = [self._key(stage) for stage in self.model_stages]
        for key in [k for k in _parked if k not in keys]:
            _parked.pop(key).stop()
        self.pools = [self._adopt(_parked.pop(key)) if key in _parked else self._pool(stage, nodes)
                      for key, stage in zip(keys, self.model_stages)]
        self.refill()

    def _adopt(self, parked: StagePool) -> StagePool:
        """A parked pool's ready workers in a pool of this run's own (its counts start from zero)."""
        pool = StagePool(parked.stage, parked.device, parked.cpus, parked.gpus, workers=parked.workers)
        now = time.perf_counter()
        for worker in pool.workers:
            worker.busy_s, worker.ready_at, worker.busy_until = 0.0, now, 0.0
            self.dims[pool.name] = worker.ready.dim
        pool.peak = len(pool.workers)
        return pool

    def _key(self, stage: Stage) -> tuple[str, str, str]:
        """What a parked pool must match to be taken over: the stage, the device, and the environment its
        workers were given (credentials rotated since: new workers)."""
        return repr(stage), self.device, hashlib.sha256(repr(worker_runtime_env()).encode()).hexdigest()

    def _pool(self, stage: Stage, nodes: list[Node]) -> StagePool:
        pool = StagePool(stage, self.device, 0.0, 0.0)
        self._place(pool, self.device, nodes)
        return pool

    def _place(self, pool: StagePool, device: str, nodes: list[Node]) -> None:
        """What each new actor of ``pool`` asks for: on GPUs the stage's declared shares; on CPUs
        ``cpu_actor_cpus`` (its torch threads follow, and the count of model copies a node holds) where the
        cluster has that for every stage besides the decodes' CPUs, else the declared fraction."""
        stage = pool.stage
        pool.device = device
        if device == "cuda":
            pool.cpus, pool.gpus = stage.resources.cpus, stage.resources.gpus
            return
        spare = sum(n.cpus - decode_reserve(n.cpus, self.decoder.resources.cpus) for n in nodes)
        share = max(stage.resources.cpus, self.cpu_actor_cpus)
        pool.cpus = share if spare >= share * len(self.model_stages) else stage.resources.cpus
        pool.gpus = 0.0

    def _follow_gpus(self) -> None:
        """With ``device: auto``, new actors go where the GPUs are: on CPU once the last GPU node is gone
        (the run goes on, slower), on GPUs again when one joins."""
        if not self.auto:
            return
        device = "cuda" if sum(n.gpus for n in self.nodes.values()) else "cpu"
        moved = [pool for pool in self.pools if pool.device != device]
        for pool in moved:
            for worker in [w for w in pool.workers if not w.ready]:  # waiting for what is no longer there
                pool.drop(worker)
            self._place(pool, device, list(self.nodes.values()))
        if moved:
            log.warning("%s: new model actors run on %s", "no GPU left in the cluster" if device == "cpu"
                        else "GPUs joined the cluster", device)

    # -- sizing ---------------------------------------------------------------------------------------------
    def resize(self, caps: list[int] | None = None, force: bool = False) -> None:
        """Widths for the live nodes, by measured cost per video (assumed equal until every stage has some);
        applied when forced (a new run, a node lost or joined) or when it speeds the slowest stage by 10%."""
        if caps is not None:
            self.caps = caps
        costs = [pool.cost_s() for pool in self.pools]
        if any(c is None for c in costs):
            costs = [1.0] * len(self.pools)
        demands = [Demand(p.name, p.cpus, p.gpus, c, cap) for p, c, cap in zip(self.pools, costs, self.caps)]
        target = widths(demands, list(self.nodes.values()), self.decoder.resources.cpus)
        current = {p.name: len(p.workers) for p in self.pools}
        if not force and bottleneck_s(demands, target) > 0.9 * bottleneck_s(demands, current):
            return
        if target != current:
            log.info("pools: %s", ", ".join(f"{name} x{n}" for name, n in target.items()))
        self.target = target
        for pool in self.pools:
            pool.retire_idle(target[pool.name])
        self.refill()

    def rebalance(self) -> None:
        now = time.perf_counter()
        if now - self.last_rebalance >= self.rebalance_s:
            self.last_rebalance = now
            self.resize()

    def refill(self) -> None:
        """Start workers where a pool is below its target (replacing dead ones, growing on a new node)."""
        for pool in self.pools:
            while len(pool.workers) < self.target.get(pool.name, 1):
                worker = pool.add()
                self.setups[worker.setup_ref] = (pool, worker)

    def on_setup(self, ref) -> None:
        """A worker's model is loaded, or it could not be: a dead worker is replaced (a few times), a model
        that does not load stops the run."""
        import ray

        pool, worker = self.setups.pop(ref)
        if worker not in pool.workers:  # the run let it go meanwhile (retired, or its GPUs went away)
            return
        try:
            worker.ready = ray.get(ref)
        except ray.exceptions.RayActorError as exc:
            pool.drop(worker, kill=False)
            lost = self.nodes_changed()[0]
            self.setup_deaths[pool.name] = self.setup_deaths.get(pool.name, 0) + (not lost)
            if self.setup_deaths[pool.name] >= SETUP_DEATHS:
                self._load_failed(pool, exc)
            self.refill()
            return
        except ray.exceptions.RayError as exc:
            self._load_failed(pool, getattr(exc, "cause", None) or exc)
        worker.ready_at = time.perf_counter()
        self.dims[pool.name] = worker.ready.dim

    def _load_failed(self, pool: StagePool, cause: BaseException) -> None:
        self.stop()
        text = str(cause).strip()
        raise ModelLoadError(
            f"cannot load the {pool.name} model {getattr(getattr(pool.stage, 'spec', None), 'ref', None)!r}: "
            f"{cause.__class__.__name__}: {text.splitlines()[0] if text else ''}"
        ) from None

    # -- nodes ----------------------------------------------------------------------------------------------
    def alive_node_ids(self) -> set[str]:
        """The nodes alive now (asked of Ray, not the last look)."""
        return {n.id for n in alive_nodes()}

    def nodes_changed(self) -> tuple[set[str], set[str]]:
        """The nodes lost and joined since last looked; the pools follow (workers of a lost node dropped,
        widths for what is left)."""
        nodes = alive_nodes()
        lost, joined = set(self.nodes) - {n.id for n in nodes}, {n.id for n in nodes} - set(self.nodes)
        if lost or joined:
            self.news.append((lost, joined))
            self.nodes = {n.id: n for n in nodes}
            self.slots = decode_slots(nodes, self.decoder.resources.cpus)
            for pool in self.pools:
                for worker in [w for w in pool.workers if w.node in lost]:
                    pool.drop(worker, kill=False)
            self._follow_gpus()
            self.resize(force=True)
        return lost, joined

    def describe(self) -> str:
        return (f"{len(self.nodes)} node(s), pools " + ", ".join(f"{p.name} x{len(p.workers)}" for p in self.pools))

    # -- running --------------------------------------------------------------------------------------------
    def run_shards(
        self, shards: list[list[VideoTask]], on_stage: Callable[[int, str], None] | None = None
    ) -> Iterator[list[VideoTask]]:
        """Each shard's finished tasks, in order, as soon as all its videos are through every stage."""
        yield from Scheduler(self, shards, on_stage).run()

    def add_seconds(self, name: str, seconds: float) -> None:
        self.stage_seconds[name] = self.stage_seconds.get(name, 0.0) + seconds

    def report(self) -> dict[str, dict]:
        """Per stage: the most actors it had, videos done, model-busy seconds, busy share, nodes used (as
        they were when the pools stopped, after ``stop``)."""
        if not getattr(self, "pools", None):
            return getattr(self, "_report", {})
        now = time.perf_counter()
        stages = {
            p.name: {"actors": p.peak, "videos": p.videos, "busy_s": round(sum(
                w.busy_s for w in [*p.workers, *p.retired]), 3), "busy_share": round(p.busy_share(now), 4),
                "nodes": sorted(p.nodes)}
            for p in self.pools
        }
        return {self.decoder.name: {"nodes": sorted(self.decode_nodes)}, **stages}

    def stop(self, park: bool = False) -> None:
        """End the pools, or (``park``) leave them to this process's next run with the same stages."""
        if getattr(self, "pools", None):
            self._report = self.report()
        for pool in getattr(self, "pools", []):
            if park:
                for worker in [w for w in pool.workers if not w.ready or w.in_flight]:
                    pool.drop(worker)
            if park and pool.workers:
                _parked[self._key(pool.stage)] = pool
            else:
                pool.stop()
        self.pools = []


def executor_for(
    decoder: Stage, model_stages: list[Stage], device: str = "auto", limits: Limits | None = None
) -> RayExecutor:
    """A started executor for these stages."""
    executor = RayExecutor(decoder, model_stages, device=device, limits=limits or Limits())
    executor.start()
    return executor


def release_parked() -> None:
    """End the pools earlier runs of this process left for the next."""
    while _parked:
        _parked.popitem()[1].stop()
