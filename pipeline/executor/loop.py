"""The scheduling loop of one ``run_shards`` call: videos stream through the stages in small batches.

A shard is only the unit of commit: its videos are decoded (CPU tasks on reserved CPUs) and then move one
by one from stage queue to stage queue, each stage's pool taking a batch (``stage.batch_size``) as a worker
has room, so one large shard keeps every stage busy. A shard comes out, in order, once all its videos are
through. The loop only moves work; pools, sizing, recovery and deadlines are their own modules.
"""
from __future__ import annotations

import logging
import math
import time
from collections import deque
from typing import Callable, Iterator

from pipeline.executor import deadlines, recovery
from pipeline.executor.pools import DEPTH, StagePool, Worker
from pipeline.executor.state import Call, Decode, Item, Shard
from pipeline.task import VideoTask

log = logging.getLogger(__name__)

NODES_EVERY_S = 1.0  # how often the cluster's live nodes are looked at
BATCHES_AN_ACTOR = 4  # a run's videos / (this x a stage's batch) caps the stage's actors


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the whole run stops, since every video would fail the same way."""


class Scheduler:
    def __init__(self, executor, shards: list[list[VideoTask]], on_stage: Callable[[int, str], None] | None):
        self.x = executor
        self.pools: list[StagePool] = executor.pools
        self.shards = [Shard([Item(n, t) for t in tasks]) for n, tasks in enumerate(shards)]
        self.pending = deque(item for shard in self.shards for item in shard.items)
        self.left = len(self.pending)  # videos not through yet, admitted or not
        self.queues: list[deque[Item]] = [deque() for _ in self.pools]
        self.calls: dict[object, Call] = {}
        self.decodes: dict[object, Decode] = {}
        self.on_stage = on_stage
        self.announced: set[tuple[int, int]] = set()
        self.next_out = 0
        self.nodes_seen = 0.0
        self.load_wait_since: float | None = None

    # -- the loop -------------------------------------------------------------------------------------------
    def run(self) -> Iterator[list[VideoTask]]:
        import ray

        # An actor is worth loading for a stage only with a few batches of its own to do (a short run keeps one).
        videos, most = len(self.pending), self.x.max_actors or math.inf
        caps = [max(1, min(most, math.ceil(videos / (BATCHES_AN_ACTOR * p.stage.batch_size)))) for p in self.pools]
        self.x.resize(caps=caps, force=True)
        while self.next_out < len(self.shards):
            self.watch_nodes()
            self.admit()
            for s in range(len(self.pools)):
                self.dispatch(s)
            self.x.rebalance()
            self.note_loading()
            for ref in self.wait():
                self.handle(ref)
            self.expire()
            yield from self.finished()

    def wait(self) -> list:
        """What is ready: the first result, and whatever else is ready by then (the next dispatch serves them
        all at once); nothing when a time limit passes first, or a second, to look at the nodes again."""
        import ray

        waiting = [*self.calls, *self.decodes, *self.x.setups]
        timeout = deadlines.wait_s(list(self.calls.values()), list(self.decodes.values()), time.perf_counter())
        timeout = NODES_EVERY_S if timeout is None else min(timeout, NODES_EVERY_S)
        if not waiting:  # nothing under way (every worker of a stage gone, say): look again shortly
            time.sleep(timeout)
            return []
        ready, _ = ray.wait(waiting, num_returns=1, fetch_local=False, timeout=timeout)
        if ready:
            ready, _ = ray.wait(waiting, num_returns=len(waiting), fetch_local=False, timeout=0)
        return ready

    def handle(self, ref) -> None:
        if ref in self.x.setups:
            self.x.on_setup(ref)
        elif ref in self.decodes:
            self.on_decoded(self.decodes.pop(ref))
        else:
            self.on_call(self.calls.pop(ref))

    def note_loading(self) -> None:
        """``stage_seconds["load models"]``: the time videos waited at a stage none of whose workers had its
        model loaded yet (at the start, or after all of them were lost)."""
        starved = any(q and not any(w.ready for w in p.workers) for q, p in zip(self.queues, self.pools))
        now = time.perf_counter()
        if starved and self.load_wait_since is None:
            self.load_wait_since = now
        elif not starved and self.load_wait_since is not None:
            self.x.add_seconds("load models", now - self.load_wait_since)
            self.load_wait_since = None

    # -- admission and dispatch -----------------------------------------------------------------------------
    def admit(self) -> None:
        """Decode more videos while there is room: decodes in flight within twice what the reserved CPUs run
        at once (Ray queues the rest; their time limits start when they do), decoded media waiting for the
        first stage within twice what its pool takes at once, and every video under way within what all the
        pools hold (backpressure: decoded media are what the object store holds)."""
        first = self.pools[0]
        ahead_cap = max(self.x.slots, DEPTH * len(first.workers) * first.stage.batch_size)
        under_way_cap = ahead_cap + sum(2 * DEPTH * len(p.workers) * p.stage.batch_size for p in self.pools)
        under_way = self.left - len(self.pending)
        while (self.pending and len(self.decodes) < 2 * self.x.slots + 2 and under_way < under_way_cap
               and len(self.decodes) + len(self.queues[0]) < ahead_cap):
            self.decode(self.pending.popleft())
            under_way += 1

    def decode(self, item: Item) -> None:
        item.step, item.ref = -1, None
        stream = self.x.decode_fn.remote(self.x.decoder, item.task)
        self.decodes[stream] = Decode(item, stream)
        self.announce(item.shard, self.x.decoder.name)

    def dispatch(self, s: int) -> None:
        """Give stage ``s``'s queued videos to its least-busy workers: full batches to any worker with room,
        a partial batch (or a video that goes alone) only to an idle one."""
        queue, pool = self.queues[s], self.pools[s]
        while queue:
            batch = self.take(queue, pool.stage.batch_size)
            full = len(batch) == pool.stage.batch_size and not batch[0].alone
            worker = pool.pick(min_free=1 if full else DEPTH)
            if worker is None:
                queue.extendleft(reversed(batch))
                return
            self.submit(s, worker, batch)

    @staticmethod
    def take(queue: deque[Item], size: int) -> list[Item]:
        if queue[0].alone:
            return [queue.popleft()]
        batch = []
        while queue and len(batch) < size and not queue[0].alone:
            batch.append(queue.popleft())
        return batch

    def submit(self, s: int, worker: Worker, batch: list[Item]) -> None:
        refs = worker.handle.run.options(num_returns=len(batch) + 1).remote(*[item.ref for item in batch])
        now = time.perf_counter()
        limit = deadlines.call_limit(self.x.limits, [item.duration_s for item in batch])
        call = Call(s, worker, batch, refs[0], list(refs[1:]), now, deadlines.due(worker, now, limit), limit)
        worker.in_flight += 1
        self.calls[call.status] = call
        for item in batch:
            self.announce(item.shard, self.pools[s].name)

    def announce(self, shard: int, stage: str) -> None:
        if self.on_stage and (shard, stage) not in self.announced:
            self.announced.add((shard, stage))
            self.on_stage(shard, stage)

    # -- results ------------------------------------------------------------------------------------------------
    def on_decoded(self, d: Decode) -> None:
        """The next result of a decode's stream: its start (its time limit runs from now), its ``Decoded``,
        or its task (then it goes on to the first model stage, unless it failed to decode)."""
        import ray

        try:
            ref = next(d.stream)
            value = ref if d.due is None or d.meta is not None else ray.get(ref)  # the start's value is not needed
        except (StopIteration, ray.exceptions.RayError) as exc:
            self.decode_failed(d, recovery.worker_died(exc))
            return
        if d.due is None:
            d.due = time.perf_counter() + self.x.limits.decode_s
        elif d.meta is None:
            d.meta = value
        else:
            self.decoded(d, value)
            return
        self.decodes[d.stream] = d

    def decoded(self, d: Decode, output) -> None:
        item = d.item
        self.x.add_seconds(self.x.decoder.name, time.perf_counter() - (d.due - self.x.limits.decode_s))
        self.x.decode_nodes.add(d.meta.node)
        item.ref = output
        if d.meta.duration_s is None:  # it failed to decode: no model has work, its row says why
            self.finish(item)
        else:
            item.duration_s = d.meta.duration_s
            self.advance(item)

    def decode_failed(self, d: Decode, why: str) -> None:
        self.decodes.pop(d.stream, None)
        self.fail(d.item, self.x.decoder.name, why)

    def on_call(self, call: Call) -> None:
        import ray

        pool, worker = self.pools[call.stage], call.worker
        worker.in_flight -= 1
        try:
            done = ray.get(call.status)
        except ray.exceptions.RayActorError as exc:
            self.on_lost_call(call, exc)
            return
        except ray.exceptions.ObjectLostError:
            # An input lived on a node that is gone (an actor's output is not rebuilt): decode it again.
            for item in call.items:
                self.decode(item)
            return
        except ray.exceptions.RayTaskError as exc:  # the call itself raised (stages catch per video, so rarely)
            for item in call.items:
                self.fail(item, pool.name, f"{exc.cause.__class__.__name__}: {str(exc.cause).strip()[:200]}")
            return
        worker.busy_s += done.busy_s
        pool.videos += len(call.items)
        pool.nodes.add(done.node)
        self.x.add_seconds(pool.name, done.busy_s)
        for item, output, ok in zip(call.items, call.outputs, done.ok):
            item.ref = output
            self.advance(item) if ok else self.finish(item)

    def on_lost_call(self, call: Call, exc: BaseException) -> None:
        pool, worker = self.pools[call.stage], call.worker
        node_lost = worker.node is not None and worker.node not in self.x.alive_node_ids()
        if worker.killed_for is call:
            log.warning("%s: a call ran over its time limit; its worker was stopped", pool.name)
        pool.drop(worker)
        retry, failed = recovery.after_lost_call(call, exc, node_lost)
        self.queues[call.stage].extendleft(reversed(retry))
        for item, why in failed:
            self.fail(item, pool.name, why)
        self.x.refill()

    def advance(self, item: Item) -> None:
        item.step += 1
        if item.step < len(self.pools):
            self.queues[item.step].append(item)
        else:
            self.finish(item)

    def finish(self, item: Item) -> None:
        item.step = len(self.pools)
        self.shards[item.shard].left -= 1
        self.left -= 1

    def fail(self, item: Item, stage: str, why: str) -> None:
        """The video fails at ``stage``, on the driver: its task as far as it got (or as admitted)."""
        import ray

        try:
            (task,) = ray.get(item.ref) if item.ref is not None else [item.task]
        except ray.exceptions.RayError:
            task = item.task
        log.warning("%s: %s: %s", stage, task.uri, why)
        task.fail(stage, why)
        task.seconds.setdefault(stage, 0.0)  # it was taken in, and cost its worker
        item.result = task
        self.finish(item)

    def finished(self) -> Iterator[list[VideoTask]]:
        import ray

        while self.next_out < len(self.shards) and self.shards[self.next_out].left == 0:
            items = self.shards[self.next_out].items
            refs = [item.ref for item in items if item.result is None]
            try:
                fetched = iter(ray.get(refs))
            except ray.exceptions.ObjectLostError:
                self.redo_lost(self.shards[self.next_out])
                return
            yield [item.result or next(fetched)[0] for item in items]
            self.next_out += 1

    def redo_lost(self, shard: Shard) -> None:
        """Videos of a shard whose finished tasks were on a node that is gone: through the stages again."""
        import ray

        for item in shard.items:
            if item.result is None:
                try:
                    ray.get(item.ref)
                except ray.exceptions.ObjectLostError:
                    shard.left += 1
                    self.left += 1
                    self.decode(item)

    # -- time limits and nodes ------------------------------------------------------------------------------
    def expire(self) -> None:
        import ray

        calls, decodes = deadlines.overdue(list(self.calls.values()), list(self.decodes.values()), time.perf_counter())
        for call in calls:
            call.worker.killed_for = call
            ray.kill(call.worker.handle)
        for d in decodes:
            ray.cancel(d.stream, force=True)
            self.decode_failed(d, deadlines.decode_expired(self.x.limits))

    def watch_nodes(self) -> None:
        now = time.perf_counter()
        if now - self.nodes_seen >= NODES_EVERY_S:
            self.nodes_seen = now
            self.x.nodes_changed()
        while self.x.news:
            self.tell(*self.x.news.pop(0))

    def tell(self, lost: set[str], joined: set[str]) -> None:
        """One line per node lost or joined: what it costs and what the pools are now."""
        for node in lost:
            there = [i for c in self.calls.values() if c.worker.node == node for i in c.items]
            log.warning("node %s lost: %d video(s) in work there go again; %s", node[:12], len(there),
                        self.x.describe())
        for node in joined:
            log.info("node %s joined: %s", node[:12], self.x.describe())
