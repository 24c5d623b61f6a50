"""The Ray executor: knows the cluster; stages do not.

Decode runs as Ray tasks (CPU, scheduled as cores free up); each model stage is a pool of actors sized to
the GPUs there are (one actor per stage on a CPU-only cluster), created once per run so models load once.
Shards flow through the stages as a pipeline, every stage busy with another shard at once, the media
passed from task to actor to actor through the object store (``run_shards``).

A worker that dies (a decoder segfaulting on a poison file, the OS killing it for memory) costs its items,
not the run: a decode task is retried once, then its video fails; a model actor is replaced, the videos of
its call are tried one by one, and the one that kills an actor alone fails, saying the worker died.
"""
from __future__ import annotations

import logging
import os
import time
from collections import deque
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

    def process_refs(self, *parts: list[VideoTask]) -> tuple[int, list[VideoTask]]:
        """A shard's tasks, given as the parts Ray resolved from refs (one per decoded video, or one list);
        returns a tiny status for the driver to wait on, and the tasks for the next stage."""
        tasks = [t for part in parts for t in part]
        size = self.stage.batch_size
        done = [t for i in range(0, len(tasks), size) for t in self.stage.process_batch(tasks[i : i + size])]
        return len(done), done


def _run_cpu_stage(stage: Stage, tasks: list[VideoTask]) -> list[VideoTask]:
    return stage.process_batch(tasks)


@dataclass
class RayExecutor:
    decoder: Stage
    model_stages: list[Stage]
    device: str = "auto"
    stage_seconds: dict[str, float] = field(default_factory=dict)
    in_flight: int = 6  # shards under way at once: one per stage, and more decoding ahead

    def start(self) -> None:
        import ray

        gpus = int(ray.cluster_resources().get("GPU", 0))
        device = self.device if self.device != "auto" else ("cuda" if gpus else "cpu")
        if device == "cuda" and not gpus:
            raise ModelLoadError("device=cuda was asked for, but the Ray cluster has no GPU")
        self.device = device
        remote_actor = ray.remote(_StageActor)
        # One retry: a worker that dies twice on the same video will die every time.
        self._decode = ray.remote(_run_cpu_stage).options(num_cpus=self.decoder.resources.cpus, max_retries=1)
        self.pools, self._spawn, self._replaced = {}, {}, {}
        for stage in self.model_stages:
            n = max(1, gpus) if device == "cuda" else 1
            opts = {"num_cpus": stage.resources.cpus, "num_gpus": stage.resources.gpus if device == "cuda" else 0}
            self._spawn[stage.name] = lambda stage=stage, opts=opts: remote_actor.options(**opts).remote(stage, device)
            self.pools[stage.name] = [self._spawn[stage.name]() for _ in range(n)]
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
        running: dict[object, tuple[int, str, object, float]] = {}  # status ref -> shard, stage, actor, start
        finished: dict[int, list[VideoTask]] = {}
        admitted, next_out = 0, 0
        while next_out < len(shards):
            # Decoded media waiting for the first stage are the bulk (audio is dropped once transcribed): at
            # most two shards decode or wait there, however many the later stages hold.
            ahead = sum(f.step <= 0 and f.sent is None for f in flights.values())
            while admitted < len(shards) and len(flights) < self.in_flight and ahead < 2:
                ahead += 1
                flights[admitted] = _Flight(shards[admitted], self._decode_async(shards[admitted]), time.perf_counter())
                if on_stage:
                    on_stage(admitted, self.decoder.name)
                admitted += 1
            for name in order:
                while queued[name] and idle[name]:
                    n, actor = queued[name].popleft(), idle[name].pop()
                    if on_stage:
                        on_stage(n, name)
                    status, flights[n].sent = actor.process_refs.options(num_returns=2).remote(*flights[n].inputs)
                    running[status] = (n, name, actor, time.perf_counter())
            decoding = {ref: n for n, f in flights.items() if f.step == -1 for ref in f.waiting}
            (ref,), _ = ray.wait([*running, *decoding], num_returns=1, fetch_local=False)
            if ref in decoding:
                flight = flights[decoding[ref]]
                flight.waiting.discard(ref)
                if not flight.waiting:  # every video of the shard decoded (or its worker gone)
                    self._add(self.decoder.name, flight.started)
                    self._advance(decoding[ref], flights, queued, order, finished)
            else:
                n, name, actor, started = running.pop(ref)
                flight = flights[n]
                self._add(name, started)
                try:
                    ray.get(ref)  # a few bytes: whether the call went through
                    idle[name].append(actor)
                    flight.inputs = [flight.sent]
                except ray.exceptions.RayActorError:  # the actor died: redo the shard's videos one by one
                    idle[name].append(self._replace(self._stage(name), actor))
                    flight.inputs = [ray.put(self._recover(self._stage(name), flight))]
                except ray.exceptions.RayTaskError:
                    if flight.step != 0 or not self._decode_died(flight):
                        raise  # not a lost input: a fault of the stage itself, which would recur
                    idle[name].append(actor)
                    flight.inputs = [ray.put(flight.tasks)]  # the shard as decoded, its dead decodes failed
                    queued[name].appendleft(n)
                    continue
                self._advance(n, flights, queued, order, finished)
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
        """The shard's tasks through ``stage`` again after an actor died on them: one video a call, on the
        pool's live actors; a video whose actor dies again (twice in all) fails, saying so."""
        import ray

        tasks = [t for part in ray.get(flight.inputs) for t in part]
        by_id = {t.video_id: t for t in tasks}
        queue = deque(t for t in tasks if stage.wants(t))
        idle, running = list(self.pools[stage.name]), {}
        while queue or running:
            while queue and idle:
                actor, task = idle.pop(), queue.popleft()
                running[actor.process_batch.remote([task])] = (actor, task)
            (ref,), _ = ray.wait(list(running), num_returns=1)
            actor, task = running.pop(ref)
            try:
                (by_id[task.video_id],) = ray.get(ref)
                idle.append(actor)
            except ray.exceptions.RayActorError as exc:
                log.warning("%s: a worker died on %s: %s", stage.name, task.uri, _first_line(exc))
                idle.append(self._replace(stage, actor))
                task.fail(stage.name, _worker_died(exc))
                task.seconds.setdefault(stage.name, 0.0)
        return [by_id[t.video_id] for t in tasks]

    def _decode_died(self, flight: _Flight) -> bool:
        """Whether a video's decode worker died (its retry too); such a video fails, saying so, in
        ``flight.tasks``, which then holds the shard as decoded."""
        import ray

        decoded, died = [], False
        for task, ref in zip(flight.tasks, flight.decoding):
            try:
                decoded += ray.get(ref)
            except ray.exceptions.RayError as exc:
                log.warning("decoding %s killed its worker: %s", task.uri, _first_line(exc))
                task.fail(self.decoder.name, _worker_died(exc))
                task.seconds.setdefault(self.decoder.name, 0.0)  # it was taken in, and cost its worker
                decoded.append(task)
                died = True
        flight.tasks = decoded
        return died

    def _decode_async(self, tasks: list[VideoTask]) -> list:
        return [self._decode.remote(self.decoder, [t]) for t in tasks]

    def _replace(self, stage: Stage, dead) -> object:
        """A new actor, set up, in place of ``dead`` in the stage's pool (the same one for every call that
        finds ``dead`` dead)."""
        import ray

        pool = self.pools[stage.name]
        if dead not in pool:
            return self._replaced[dead]
        actor = self._spawn[stage.name]()
        ray.get(actor.setup.remote())
        pool[pool.index(dead)] = actor
        self._replaced[dead] = actor
        return actor

    def _add(self, name: str, start: float) -> None:
        self.stage_seconds[name] = self.stage_seconds.get(name, 0.0) + time.perf_counter() - start

    def alive(self) -> bool:
        import ray

        try:
            ray.get([actors[0].describe.remote() for actors in self.pools.values()], timeout=30)
        except Exception:
            return False
        return True


@dataclass
class _Flight:
    """One shard under way: its tasks, the refs its next stage takes, and how far it has come."""

    tasks: list[VideoTask]
    decoding: list  # one ref per video: its decode task
    started: float
    step: int = -1  # -1: decoding; else the index of the model stage it waits for or is in
    sent: object = None  # the data ref of the stage call under way
    inputs: list = field(init=False)  # what its next stage call takes: refs of lists of tasks
    waiting: set = field(init=False)  # decode refs not yet done

    def __post_init__(self) -> None:
        self.inputs, self.waiting = list(self.decoding), set(self.decoding)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else exc.__class__.__name__


def _worker_died(exc: BaseException) -> str:
    """What a failed row says when the process working on it died: which error, and the likely causes."""
    return (
        f"the worker process died twice on it ({exc.__class__.__name__}): it crashes a decoder or library, "
        "or exhausts memory"
    )


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
