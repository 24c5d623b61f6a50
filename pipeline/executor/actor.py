"""What runs on the workers: a stage's model in an actor, and one video's decode as a task.

Both send back, beside the tasks, a few bytes for the driver (where the work ran, how long it was busy,
which videos are still ok), so that the driver schedules on facts without fetching media.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass

from pipeline.stages.base import Stage
from pipeline.task import VideoTask

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ready:
    """An actor with its model loaded: where, on what device, after how long, and the model's width."""

    node: str
    device: str
    load_s: float
    dim: int | None


@dataclass(frozen=True)
class Done:
    """A stage call done: where it ran, the seconds the model was busy, and per video whether it is still ok."""

    node: str
    busy_s: float
    ok: tuple[bool, ...]


@dataclass(frozen=True)
class Decoded:
    """A decode done: where, and the video's duration (None when it failed: no model stage has work)."""

    node: str
    duration_s: float | None


def node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def usable_device(device: str) -> str:
    """``device``, unless it is ``cuda`` on a node whose GPUs Ray schedules but torch cannot use (declared
    with ``--num-gpus`` where there are none, a broken driver): then ``cpu``, saying so once."""
    if device != "cuda":
        return device
    import torch  # only asked of GPU actors, which load torch models anyway

    if torch.cuda.is_available():
        return device
    log.warning(
        "node %s: Ray placed a GPU actor here but torch sees no usable CUDA device; running it on CPU", node_id()[:12]
    )
    return "cpu"


class StageActor:
    """One stage's model, loaded once (``setup``) and fed batches of videos by the run that owns it."""

    def __init__(self, stage: Stage, device: str, threads: int):
        self.stage = stage
        self.device = device
        self.threads = threads

    def setup(self) -> Ready:
        self.device = usable_device(self.device)
        start = time.perf_counter()
        self.stage.setup(self.device)
        torch = sys.modules.get("torch")  # a stage without torch need not pay for importing it
        if torch is not None:
            # The actor's share of its node's CPUs, not every core: other stages and the decodes run at once.
            torch.set_num_threads(self.threads)
        dim = getattr(getattr(self.stage, "model", None), "dim", None)
        return Ready(node_id(), self.device, time.perf_counter() - start, dim)

    def run(self, *parts: list[VideoTask]) -> tuple:
        """The videos given as the lists Ray resolved from refs (one per video); returns a ``Done`` and then
        each video's task, each its own object, so the next stage can batch them as it likes."""
        tasks = [t for part in parts for t in part]
        start = time.perf_counter()
        size = self.stage.batch_size
        for i in range(0, len(tasks), size):
            self.stage.process_batch(tasks[i : i + size])
        done = Done(node_id(), time.perf_counter() - start, tuple(t.ok for t in tasks))
        return (done, *([t] for t in tasks))


def decode(stage: Stage, task: VideoTask):
    """One video decoded, as a stream: its start (the time limit counts from here, not from a wait for a
    worker), a ``Decoded`` for the driver, and the task for the first model stage (which only the actors
    fetch)."""
    yield node_id()
    (done,) = stage.process_batch([task])
    duration = float((done.probe.duration_s if done.probe is not None else 0.0) or 0.0) if done.ok else None
    yield Decoded(node_id(), duration)
    yield [done]


def threads_for(cpus: float) -> int:
    """Torch threads for an actor holding ``cpus`` of its node: its share, at least one."""
    return max(1, min(int(cpus), os.cpu_count() or 1))
