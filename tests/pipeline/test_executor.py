"""The Ray executor on stand-in stages: ordering, batching, and workers that die under a poison input.

The stages here are real stages of the executor's protocol that do no media work: they mark what they saw,
and the poison item makes the process running them kill itself with SIGKILL, as a decoder segfault or
the kernel's OOM killer would. Nothing is patched: Ray really loses the worker.
"""
from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass, field

import ray.cloudpickle

from pipeline.config import Limits, Resources
from pipeline.executor import RayExecutor
from pipeline.stages.base import Stage
from pipeline.task import VideoTask


@dataclass
class _Marking(Stage):
    """Appends its name to each task's ``language``; dies (SIGKILL) on tasks whose URI holds ``poison``."""

    poison: str = "poison"
    hang: str = "hang"  # tasks whose URI holds this make it wait (nearly) forever
    resources: Resources = field(default_factory=lambda: Resources(cpus=0.25))

    def process(self, tasks: list[VideoTask]) -> None:
        for task in tasks:
            if self.poison in task.uri:
                os.kill(os.getpid(), signal.SIGKILL)
            if self.hang in task.uri:
                time.sleep(3600)
            task.language = (task.language or "") + self.name[0]


# Ray's workers cannot import this test module: its stage classes travel by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _tasks(names: list[str]) -> list[VideoTask]:
    return [VideoTask(f"id-{n}", f"file:///media/{n}.mp4", "fp", 1) for n in names]


def test_shards_come_back_in_order_through_every_stage(ray_session):
    executor = RayExecutor(_Marking(name="decode", poison="-"), [_Marking(name="x", batch_size=2),
                                                                _Marking(name="y", batch_size=3)])
    executor.start()
    try:
        shards = [_tasks(["a", "b", "c"]), _tasks(["d"]), _tasks(["e", "f"])]
        out = list(executor.run_shards(shards))
    finally:
        executor.stop()
    assert [[t.video_id for t in shard] for shard in out] == [[t.video_id for t in s] for s in shards]
    assert {t.language for shard in out for t in shard} == {"dxy"} and all(t.ok for s in out for t in s)
    assert set(executor.stage_seconds) == {"load models", "decode", "x", "y"}


def test_a_worker_killed_by_one_video_fails_that_video_only(ray_session):
    executor = RayExecutor(
        _Marking(name="decode", poison="poison-decode"),
        [_Marking(name="model", poison="poison-model", batch_size=3), _Marking(name="after", poison="-")],
    )
    executor.start()
    try:
        (shard,) = executor.run_shards([_tasks(["a", "poison-decode", "b", "poison-model", "c"])])
        (again,) = executor.run_shards([_tasks(["d"])])  # on the actor that replaced the dead one
    finally:
        executor.stop()
    by_name = {t.uri.rsplit("/", 1)[1][:-4]: t for t in shard}
    assert [t.video_id for t in shard] == [f"id-{n}" for n in ["a", "poison-decode", "b", "poison-model", "c"]]
    assert by_name["poison-decode"].error.startswith("decode: the worker process died twice on it")
    assert by_name["poison-model"].error.startswith("model: the worker process died twice on it")
    # The videos that shared a batch with the poison were redone one by one and went on through every stage.
    assert all(by_name[n].ok and by_name[n].language == "dma" for n in ("a", "b", "c"))
    assert again[0].ok and again[0].language == "dma"


def test_a_hung_video_costs_its_time_limit_and_fails_alone(ray_session):
    limits = Limits(stage_s=2.0, stage_s_per_media_s=0.0, decode_s=3.0)
    executor = RayExecutor(
        _Marking(name="decode", poison="never", hang="hang-decode"),
        [_Marking(name="model", poison="never", hang="hang-model", batch_size=4), _Marking(name="after", poison="never")],
        limits=limits,
    )
    executor.start()
    started = time.perf_counter()
    try:
        (shard,) = executor.run_shards([_tasks(["a", "hang-decode", "hang-model", "b"])])
        (again,) = executor.run_shards([_tasks(["c"])])
    finally:
        executor.stop()
    elapsed = time.perf_counter() - started
    by_name = {t.uri.rsplit("/", 1)[1][:-4]: t for t in shard}
    assert by_name["hang-decode"].error == "decode: exceeded its time limit of 3 s (limits.decode_s)"
    assert by_name["hang-model"].error.startswith("model: exceeded its time limit of 2 s")
    assert all(by_name[n].ok and by_name[n].language == "dma" for n in ("a", "b"))
    assert again[0].ok and again[0].language == "dma"
    # Decode's 3 s, the shard call's 3 x 2 s, the hung video's own 2 s, and restarting stopped workers;
    # without limits the hour's sleep would hold the run.
    assert elapsed < 60, elapsed
