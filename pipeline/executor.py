"""The Ray executor: knows the cluster; stages do not.

Decode runs as Ray tasks (CPU, scheduled as cores free up); each model stage is a pool of actors sized to
the GPUs there are (one actor per stage on a CPU-only cluster). The actors are named after their stage and
its settings, so that every run with the same models finds them loaded: on a cluster that the run joined
(an Airflow shard task, a Ray Job) they are detached and outlive the run, each leaving on its own after
``idle_s`` without work; on a Ray this process started they live as long as the process.
Shards flow through the stages as a pipeline, every stage busy with another shard at once, the media
passed from task to actor to actor through the object store (``run_shards``).

A worker that dies (a decoder segfaulting on a poison file, the OS killing it for memory) costs its items,
not the run: a decode task is retried once, then its video fails; a model actor is replaced, the videos of
its call are tried one by one, and the one that kills an actor alone fails, saying the worker died.
"""
from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterator

from pipeline.config import Limits
from pipeline.stages.base import Stage
from pipeline.task import VideoTask

log = logging.getLogger(__name__)


NAMESPACE = "reelscope"  # where the model actors are named
IDLE_S = 300.0  # how long a detached model actor waits for work before it leaves

_joined = False  # whether this process joined a cluster that outlives it (else it started its own Ray)
_held: dict[str, object] = {}  # name -> handle of every model actor this process made or found: keeps them


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the whole run stops, since every video would fail the same way."""


def ensure_ray(address: str | None = None, object_store_bytes: int = 2 * 1024**3) -> None:
    """Join a cluster (``address`` or ``RAY_ADDRESS``) or start a local Ray, unless one is already up."""
    import ray

    global _joined
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
        _joined = True
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
    """One stage's model, loaded once and kept for every run that finds the actor by its name."""

    def __init__(self, stage: Stage, device: str, idle_s: float | None = None):
        self.stage = stage
        self.device = device
        self.loaded = False
        self.last_call = time.monotonic()
        if idle_s:
            threading.Thread(target=self._leave_when_idle, args=(idle_s,), daemon=True).start()

    def _leave_when_idle(self, idle_s: float) -> None:
        """End the actor (gracefully: after any call already queued) once ``idle_s`` pass without a call, so
        that a cluster's GPUs go back to whoever needs them when no run is using these models."""
        import ray

        while time.monotonic() - self.last_call < idle_s:
            time.sleep(min(idle_s / 4, 15.0))
        log.info("%s model idle for %.0f s: leaving", self.stage.name, idle_s)
        ray.get_runtime_context().current_actor.__ray_terminate__.remote()

    def setup(self) -> float:
        """Load the model unless this actor already has; returns the seconds this call spent loading."""
        self.last_call = time.monotonic()
        if self.loaded:
            return 0.0
        from transformers.utils import logging as hf_logging

        # Per-load progress bars from every actor would drown the run's own progress.
        hf_logging.disable_progress_bar()
        _set_threads(self.stage.resources.cpus, self.device)
        start = time.perf_counter()
        self.stage.setup(self.device)
        self.loaded = True
        return time.perf_counter() - start

    def dim(self) -> int | None:
        """The model's output width (the embedder's: what the keyframes' vectors have), if it has one."""
        return getattr(getattr(self.stage, "model", None), "dim", None)

    def process_batch(self, tasks: list[VideoTask]) -> list[VideoTask]:
        self.last_call = time.monotonic()
        size = self.stage.batch_size
        done = [t for i in range(0, len(tasks), size) for t in self.stage.process_batch(tasks[i : i + size])]
        self.last_call = time.monotonic()  # idle from the end of a call, however long it took
        return done

    def process_refs(self, *parts: list[VideoTask]) -> tuple[int, list[VideoTask]]:
        """A shard's tasks, given as the parts Ray resolved from refs (one per decoded video, or one list);
        returns a tiny status for the driver to wait on, and the tasks for the next stage."""
        done = self.process_batch([t for part in parts for t in part])
        return len(done), done


def _decode_one(stage: Stage, task: VideoTask) -> tuple[float | None, list[VideoTask]]:
    """One video decoded: its duration, or None when it failed (a few bytes for the driver: what its time
    limits in the model stages are sized by, and whether it needs them at all), and the task for the first
    model stage (which only the actors fetch)."""
    (done,) = stage.process_batch([task])
    if not done.ok:
        return None, [done]
    return float((done.probe.duration_s if done.probe is not None else 0.0) or 0.0), [done]


@dataclass
class RayExecutor:
    decoder: Stage
    model_stages: list[Stage]
    device: str = "auto"
    idle_s: float = IDLE_S  # on a joined cluster, how long the models wait for the next run; 0: they end with this one
    limits: Limits = field(default_factory=Limits)  # the time limits: decode_s, stage_s, stage_s_per_media_s
    stage_seconds: dict[str, float] = field(default_factory=dict)
    in_flight: int = 6  # shards under way at once: one per stage, and more decoding ahead

    def start(self) -> None:
        """Find or create each stage's actors, and have every one load its model unless it has already."""
        import ray

        gpus = int(ray.cluster_resources().get("GPU", 0))
        device = self.device if self.device != "auto" else ("cuda" if gpus else "cpu")
        if device == "cuda" and not gpus:
            raise ModelLoadError("device=cuda was asked for, but the Ray cluster has no GPU")
        self.device = device
        # One retry: a worker that dies twice on the same video will die every time.
        self._decode = ray.remote(_decode_one).options(
            num_cpus=self.decoder.resources.cpus, max_retries=1, num_returns=2
        )
        self._expired: dict[object, str] = {}  # actors killed for running over a time limit -> why
        n = max(1, gpus) if device == "cuda" else 1
        names = {stage.name: [self._name(stage, i) for i in range(n)] for stage in self.model_stages}
        if not _joined:
            # This process's own Ray: actors of other settings (an earlier run's) give their CPUs back.
            release_models(keep={name for pool in names.values() for name in pool})
        self.pools = {stage.name: [self._actor(stage, name) for name in names[stage.name]] for stage in self.model_stages}
        self._replaced = {}
        self.dims: dict[str, int | None] = {}  # per stage, once its models are loaded: the output width
        # The models load while the first shards decode; the first stage call waits for them (wait_loaded).
        self._loading = {
            actor.setup.remote(): (stage, i) for stage in self.model_stages for i, actor in enumerate(self.pools[stage.name])
        }

    def wait_loaded(self) -> None:
        """Wait until every actor has its model; ``stage_seconds["load models"]`` is the time waited."""
        import ray

        if not self._loading:
            return
        start, loading = time.perf_counter(), 0.0
        for ref, (stage, i) in self._loading.items():
            try:
                try:
                    loading += ray.get(ref)
                except ray.exceptions.RayActorError:
                    # Found by its name as it was leaving (idle on a cluster): a fresh one takes its place.
                    self.pools[stage.name][i] = self._actor(stage, f"{self._name(stage, i)}-{os.urandom(3).hex()}")
                    loading += ray.get(self.pools[stage.name][i].setup.remote())
            except Exception as exc:
                self.stop()
                cause = getattr(exc, "cause", None) or exc
                raise ModelLoadError(
                    f"cannot load the {stage.name} model {getattr(stage, 'spec', None) and stage.spec.ref!r}: "
                    f"{cause.__class__.__name__}: {str(cause).strip().splitlines()[0] if str(cause).strip() else ''}"
                ) from None
        self._loading = {}
        self.stage_seconds["load models"] = time.perf_counter() - start
        self.dims = {name: ray.get(actors[0].dim.remote()) for name, actors in self.pools.items()}
        log.info("models %s on %s after %.1f s of waiting", "loaded" if loading else "found loaded",
                 self.device, self.stage_seconds["load models"])

    def _name(self, stage: Stage, index: int) -> str:
        """The actor's name: its stage, a digest of everything that decides what it loads and how, its place."""
        digest = hashlib.sha256(repr((stage, self.device)).encode()).hexdigest()[:12]
        return f"{stage.name}-{digest}-{index}"

    def _actor(self, stage: Stage, name: str):
        import ray

        opts = {
            "num_cpus": stage.resources.cpus,
            "num_gpus": stage.resources.gpus if self.device == "cuda" else 0,
            "name": name,
            "namespace": NAMESPACE,
            "get_if_exists": True,
        }
        if _joined and self.idle_s:
            # On a cluster the run only joined, the models outlive it for the next run (the next shard task).
            actor = ray.remote(_StageActor).options(lifetime="detached", **opts).remote(stage, self.device, self.idle_s)
        else:
            actor = ray.remote(_StageActor).options(**opts).remote(stage, self.device)
        # Ray ends an actor once its creator's handle is gone, named or not: the first handle to each one is kept
        # (a handle found by name is not its creator's, so it must not take the first one's place).
        if name not in _held or _held[name]._actor_id != actor._actor_id:
            _held[name] = actor
        return actor

    def stop(self) -> None:
        import ray

        for actors in getattr(self, "pools", {}).values():
            for actor in actors:
                ray.kill(actor)
        self.pools = {}

    def run_shards(
        self, shards: list[list[VideoTask]], on_stage: Callable[[int, str], None] | None = None
    ) -> Iterator[list[VideoTask]]:
        """Each shard's finished tasks, in order, as soon as it has been through every stage.

        Shards flow through the stages as a pipeline: while one is summarised the next is embedded, another
        captioned, another transcribed and more decode, every stage's actors fed by the whole run, with at
        most ``in_flight`` shards under way (backpressure: their decoded media are what the object store
        holds). A shard's media go from decode tasks to actor to actor through the object store; the driver
        fetches them only once the shard is through, to write it.
        """
        import ray

        order = [stage.name for stage in self.model_stages]
        flights: dict[int, _Flight] = {}
        queued: dict[str, deque[int]] = {name: deque() for name in order}
        # Two calls a actor at a time: the next shard waits at the actor, not for the driver to notice that
        # the last one is done (the actor runs them one after the other all the same).
        idle = {name: [a for a in actors for _ in range(2)] for name, actors in self.pools.items()}
        running: dict[object, _Call] = {}  # status ref -> the stage call it reports on
        busy_until: dict[object, float] = {}  # actor -> when the calls queued at it are due to be done
        finished: dict[int, list[VideoTask]] = {}
        admitted, next_out = 0, 0
        while next_out < len(shards):
            # Decoded media waiting for the first stage are the bulk (audio is dropped once transcribed): at
            # most two shards decode or wait there, however many the later stages hold.
            ahead = sum(f.step <= 0 and f.sent is None for f in flights.values())
            while admitted < len(shards) and len(flights) < self.in_flight and ahead < 2:
                ahead += 1
                flights[admitted] = self._decode_async(shards[admitted])
                if on_stage:
                    on_stage(admitted, self.decoder.name)
                admitted += 1
            if any(queued.values()):
                self.wait_loaded()
            for name in order:
                while queued[name] and idle[name]:
                    n, actor = queued[name].popleft(), idle[name].pop()
                    if on_stage:
                        on_stage(n, name)
                    status, flights[n].sent = actor.process_refs.options(num_returns=2).remote(*flights[n].inputs)
                    now = time.perf_counter()
                    # Its time starts when the call before it at the same actor is due to end.
                    due = max(now, busy_until.get(actor, now)) + self._limit(flights[n].durations.values())
                    busy_until[actor] = due
                    running[status] = _Call(n, name, actor, now, due)
            decoding = {ref: n for n, f in flights.items() if f.step == -1 for ref in f.waiting}
            ready, _ = ray.wait(
                [*running, *decoding], num_returns=1, fetch_local=False, timeout=self._wait_s(running, flights)
            )
            if not ready:  # a time limit passed
                self._expire(running, flights)
                continue
            (ref,) = ready
            if ref in decoding:
                flight = flights[decoding[ref]]
                flight.waiting.discard(ref)
                if not flight.waiting:  # every video of the shard decoded (or failed doing so)
                    self._add(self.decoder.name, flight.started)
                    self._decoded(flight)
                    if not flight.durations:  # nothing decoded: no model has work, none need be waited for
                        flight.step = len(order) - 1
                    self._advance(decoding[ref], flights, queued, order, finished)
            else:
                call = running.pop(ref)
                flight = flights[call.shard]
                self._add(call.stage, call.started)
                try:
                    ray.get(ref)  # a few bytes: whether the call went through
                    idle[call.stage].append(call.actor)
                    flight.inputs = [flight.sent]
                except ray.exceptions.RayActorError:  # the actor died or was stopped: its videos one by one
                    idle[call.stage].append(self._replace(self._stage(call.stage), call.actor))
                    flight.inputs = [ray.put(self._recover(self._stage(call.stage), flight))]
                self._advance(call.shard, flights, queued, order, finished)
            while next_out in finished:
                yield finished.pop(next_out)
                next_out += 1

    def _advance(self, n: int, flights: dict, queued: dict, order: list[str], finished: dict) -> None:
        """Shard ``n`` on to its next stage, or, through them all, fetched and done."""
        import ray

        flight = flights[n]
        flight.step += 1
        if flight.step < len(order):
            queued[order[flight.step]].append(n)
        else:
            finished[n] = [t for part in ray.get(flight.inputs) for t in part]
            del flights[n]

    def _stage(self, name: str) -> Stage:
        return next(stage for stage in self.model_stages if stage.name == name)

    def _recover(self, stage: Stage, flight: _Flight) -> list[VideoTask]:
        """The shard's tasks through ``stage`` again after its actor died on them (or was stopped at its time
        limit): one video a call, on the pool's live actors, each within its own limit. A video whose actor
        dies again (twice in all) fails, saying so; one that runs over its limit alone fails, saying that."""
        import ray

        tasks = [t for part in ray.get(flight.inputs) for t in part]
        by_id = {t.video_id: t for t in tasks}
        queue = deque(t for t in tasks if stage.wants(t))
        idle, running = list(self.pools[stage.name]), {}
        while queue or running:
            while queue and idle:
                actor, task = idle.pop(), queue.popleft()
                now = time.perf_counter()
                due = now + self._limit([flight.durations.get(task.video_id, 0.0)])
                running[actor.process_batch.remote([task])] = _Call(0, stage.name, actor, now, due, task)
            ready, _ = ray.wait(list(running), num_returns=1, timeout=self._wait_s(running, {}))
            if not ready:
                self._expire(running, {})
                continue
            call = running.pop(ready[0])
            try:
                (by_id[call.task.video_id],) = ray.get(ready[0])
                idle.append(call.actor)
            except ray.exceptions.RayActorError as exc:
                why = self._expired.get(call.actor) or _worker_died(exc)
                log.warning("%s: %s: %s", stage.name, call.task.uri, why)
                idle.append(self._replace(stage, call.actor))
                call.task.fail(stage.name, why)
                call.task.seconds.setdefault(stage.name, 0.0)
        return [by_id[t.video_id] for t in tasks]

    def _decoded(self, flight: _Flight) -> None:
        """Read the shard's durations (a few bytes a video); a video whose decode failed outright (its worker
        died twice, or it ran over ``limits.decode_s``) becomes a failed task that says so."""
        import ray

        for i, (task, meta) in enumerate(zip(flight.tasks, flight.meta)):
            try:
                duration = ray.get(meta)
                if duration is not None:
                    flight.durations[task.video_id] = duration
            except ray.exceptions.RayError as exc:
                why = (f"exceeded its time limit of {self.limits.decode_s:g} s (limits.decode_s)"
                       if meta in flight.cancelled else _worker_died(exc))
                log.warning("decoding %s: %s", task.uri, why)
                task.fail(self.decoder.name, why)
                task.seconds.setdefault(self.decoder.name, 0.0)  # it was taken in, and cost its worker
                flight.inputs[i] = ray.put([task])

    def _limit(self, durations) -> float:
        """Seconds a stage call may take: for each of its videos, ``stage_s`` plus ``stage_s_per_media_s`` per
        second of media."""
        return sum(self.limits.stage_s + self.limits.stage_s_per_media_s * d for d in durations)

    def _wait_s(self, running: dict[object, _Call], flights: dict[int, _Flight]) -> float | None:
        """How long to wait for a result before the next time limit passes (None: no limit pending)."""
        dues = [c.due for c in running.values() if c.actor not in self._expired]
        dues += [f.started + self.limits.decode_s for f in flights.values() if f.step == -1 and f.waiting - f.cancelled]
        return max(0.0, min(dues) - time.perf_counter()) if dues else None

    def _expire(self, running: dict[object, _Call], flights: dict[int, _Flight]) -> None:
        """Stop what ran over its time limit: a stage call's actor is killed (the call then fails like a
        dead actor's, and its videos are tried one by one), an overdue decode is cancelled."""
        import ray

        now = time.perf_counter()
        for call in running.values():
            if call.due <= now and call.actor not in self._expired:
                self._expired[call.actor] = (
                    f"exceeded its time limit of {call.due - call.started:.0f} s (limits.stage_s + "
                    "limits.stage_s_per_media_s x its duration)"
                )
                log.warning("%s: a call ran over its time limit; stopping its worker", call.stage)
                ray.kill(call.actor)
        for flight in flights.values():
            if flight.step == -1 and flight.started + self.limits.decode_s <= now:
                for meta, ref in zip(flight.meta, flight.decoding):
                    if meta in flight.waiting and meta not in flight.cancelled:
                        flight.cancelled.add(meta)
                        ray.cancel(ref, force=True)

    def _decode_async(self, tasks: list[VideoTask]) -> _Flight:
        refs = [self._decode.remote(self.decoder, t) for t in tasks]
        return _Flight(tasks, [m for m, _ in refs], [d for _, d in refs], time.perf_counter())

    def _replace(self, stage: Stage, dead) -> object:
        """A new actor, set up, in place of ``dead`` in the stage's pool (the same one for every call that
        finds ``dead`` dead)."""
        import ray

        pool = self.pools[stage.name]
        if dead not in pool:
            return self._replaced[dead]
        ray.kill(dead)
        # A name of its own: the dead actor's may not be free yet.
        actor = self._actor(stage, f"{self._name(stage, pool.index(dead))}-{os.urandom(3).hex()}")
        ray.get(actor.setup.remote())
        pool[pool.index(dead)] = actor
        self._replaced[dead] = actor
        return actor

    def _add(self, name: str, start: float) -> None:
        self.stage_seconds[name] = self.stage_seconds.get(name, 0.0) + time.perf_counter() - start


@dataclass
class _Flight:
    """One shard under way: its tasks, the refs its next stage takes, and how far it has come."""

    tasks: list[VideoTask]
    meta: list  # one ref per video: its duration, once decoded
    decoding: list  # one ref per video: its decoded task
    started: float
    step: int = -1  # -1: decoding; else the index of the model stage it waits for or is in
    sent: object = None  # the data ref of the stage call under way
    inputs: list = field(init=False)  # what its next stage call takes: refs of lists of tasks
    waiting: set = field(init=False)  # duration refs of decodes not yet done
    cancelled: set = field(default_factory=set)  # duration refs of decodes stopped at their time limit
    durations: dict[str, float] = field(default_factory=dict)  # video id -> seconds of media, if decoded

    def __post_init__(self) -> None:
        self.inputs, self.waiting = list(self.decoding), set(self.meta)


@dataclass
class _Call:
    """A stage call under way: whose, where, since when, and when it is due (its time limit)."""

    shard: int
    stage: str
    actor: object
    started: float
    due: float
    task: VideoTask | None = None  # the one video of a recovery call


def _worker_died(exc: BaseException) -> str:
    """What a failed row says when the process working on it died: which error, and the likely causes."""
    return (
        f"the worker process died twice on it ({exc.__class__.__name__}): it crashes a decoder or library, "
        "or exhausts memory"
    )


def executor_for(
    decoder: Stage, model_stages: list[Stage], device: str = "auto", idle_s: float = IDLE_S,
    limits: Limits | None = None,
) -> RayExecutor:
    """A started executor for these stages, its models found loaded where an earlier run left them."""
    executor = RayExecutor(decoder, model_stages, device=device, idle_s=idle_s, limits=limits or Limits())
    executor.start()
    return executor


def release_models(keep: set[str] = frozenset()) -> list[str]:
    """End the named model actors (all, or all but ``keep``) and return their names; a run that follows
    loads its models again."""
    import ray

    gone = []
    for entry in ray.util.list_named_actors(all_namespaces=True):
        if entry["namespace"] == NAMESPACE and entry["name"] not in keep:
            _held.pop(entry["name"], None)
            try:
                ray.kill(ray.get_actor(entry["name"], namespace=NAMESPACE))
            except ValueError:  # it left meanwhile
                continue
            gone.append(entry["name"])
    return gone
