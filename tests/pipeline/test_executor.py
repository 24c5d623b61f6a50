"""The Ray executor on stand-in stages: ordering, batching, and workers that die under a poison input.

The stages here are real stages of the executor's protocol that do no media work: they mark what they saw,
and the poison item makes the process running them kill itself with SIGKILL, as a decoder segfault or
the kernel's OOM killer would. Nothing is patched: Ray really loses the worker.
"""
from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass, field

import ray.cloudpickle

from pipeline.config import Resources
from pipeline.executor import RayExecutor
from pipeline.stages.base import Stage
from pipeline.task import VideoTask


@dataclass
class _Marking(Stage):
    """Appends its name to each task's ``language``; dies (SIGKILL) on tasks whose URI holds ``poison``."""

    poison: str = "poison"
    resources: Resources = field(default_factory=lambda: Resources(cpus=0.25))

    def process(self, tasks: list[VideoTask]) -> None:
        for task in tasks:
            if self.poison in task.uri:
                os.kill(os.getpid(), signal.SIGKILL)
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
        assert executor.alive()  # the dead model actor was replaced
        (again,) = executor.run_shards([_tasks(["d"])])
    finally:
        executor.stop()
    by_name = {t.uri.rsplit("/", 1)[1][:-4]: t for t in shard}
    assert [t.video_id for t in shard] == [f"id-{n}" for n in ["a", "poison-decode", "b", "poison-model", "c"]]
    assert by_name["poison-decode"].error.startswith("decode: the worker process died twice on it")
    assert by_name["poison-model"].error.startswith("model: the worker process died twice on it")
    # The videos that shared a batch with the poison were redone one by one and went on through every stage.
    assert all(by_name[n].ok and by_name[n].language == "dma" for n in ("a", "b", "c"))
    assert again[0].ok and again[0].language == "dma"
