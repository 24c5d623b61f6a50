"""The Ray executor on stand-in stages: ordering, batching, pools, time limits, and workers that die under a
poison input.

The stages here are real stages of the executor's protocol that do no media work: they mark what they saw,
and the poison item makes the process running them kill itself with SIGKILL, as a decoder segfault or
the kernel's OOM killer would. Nothing is patched: Ray really loses the worker.
"""
from __future__ import annotations

import os
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

import pytest
import ray.cloudpickle

from pipeline.config import Limits, Resources
from pipeline.executor import RayExecutor, release_parked
from pipeline.executor.actor import threads_for
from pipeline.stages.base import Stage
from pipeline.task import VideoTask


@dataclass
class _Marking(Stage):
    """Appends its name to each task's ``language``; dies (SIGKILL) on tasks whose URI holds ``poison``."""

    poison: str = "poison"
    hang: str = "hang"  # tasks whose URI holds this make it wait (nearly) forever
    sleep_s: float = 0.0  # what each video costs it
    record: bool = False  # write on each task which process did it, with how many torch threads
    resources: Resources = field(default_factory=lambda: Resources(cpus=0.25))

    def process(self, tasks: list[VideoTask]) -> None:
        for task in tasks:
            if self.poison in task.uri:
                os.kill(os.getpid(), signal.SIGKILL)
            if self.hang in task.uri:
                time.sleep(3600)
            time.sleep(self.sleep_s)
            task.language = (task.language or "") + self.name[0]
            if self.record:  # who did it, with how many threads: what the pool tests look at
                import torch

                task.models[self.name] = f"{os.getpid()}/{torch.get_num_threads()}"


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
    assert set(executor.stage_seconds) - {"load models"} == {"decode", "x", "y"}  # load: if videos waited


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
    limits = Limits(stage_s=2.0, stage_s_per_media_s=0.0, decode_s=6.0)
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
    assert by_name["hang-decode"].error == "decode: exceeded its time limit of 6 s (limits.decode_s)"
    assert by_name["hang-model"].error.startswith("model: exceeded its time limit of 2 s")
    assert all(by_name[n].ok and by_name[n].language == "dma" for n in ("a", "b"))
    assert again[0].ok and again[0].language == "dma"
    # Decode's 3 s, the shard call's 3 x 2 s, the hung video's own 2 s, and restarting stopped workers;
    # without limits the hour's sleep would hold the run.
    assert elapsed < 60, elapsed


def _run(executor: RayExecutor, shards: list[list[VideoTask]]) -> list[list[VideoTask]]:
    executor.start()
    try:
        return list(executor.run_shards(shards))
    finally:
        executor.stop()


def test_one_large_shard_keeps_every_worker_of_a_pool_busy(ray_session):
    """Least-busy dispatch over small batches: a single shard of 24 videos is spread over the pool's
    workers (the old executor sent a driver's one call per stage to the last actor of the pool)."""
    executor = RayExecutor(_Marking(name="decode", poison="-"), [_Marking(name="slow", sleep_s=0.3, batch_size=1, record=True)],
                           max_actors=3, cpu_actor_cpus=0.25)
    (shard,) = _run(executor, [_tasks([f"v{i}" for i in range(24)])])
    by_worker = Counter(t.models["slow"].split("/")[0] for t in shard)
    # Three workers started; those that loaded in time shared the videos (on a loaded machine one may come up
    # after the others have done them all).
    assert all(t.ok for t in shard) and len(by_worker) >= 2 and sorted(by_worker.values())[-2] >= 4, by_worker
    report = executor.report()["slow"]
    assert report["actors"] == 3 and report["videos"] == 24


def test_torch_threads_follow_the_actors_cpu_share(ray_session):
    (shard,) = _run(RayExecutor(_Marking(name="decode", poison="-"), [_Marking(name="m", record=True)]), [_tasks(["a"])])
    assert shard[0].models["m"].split("/")[1] == str(threads_for(0.25)) == "1"


def test_a_decode_time_limit_runs_from_the_videos_own_start(ray_session):
    """Sixteen decodes of 0.6 s each on the CPUs this Ray has left for them take longer than the 3 s limit
    in all, and none of them alone: none fails (the old limit ran from the shard's admission)."""
    limits = Limits(stage_s=30.0, stage_s_per_media_s=0.0, decode_s=3.0)
    executor = RayExecutor(_Marking(name="decode", poison="-", sleep_s=0.6), [_Marking(name="m")], limits=limits)
    started = time.perf_counter()
    (shard,) = _run(executor, [_tasks([f"v{i}" for i in range(16)])])
    assert time.perf_counter() - started > 3.0
    assert all(t.ok for t in shard), [t.error for t in shard if not t.ok]


def test_calls_queued_at_a_worker_get_their_own_time_limit(ray_session):
    """One worker, calls of 1 s each queued two deep under a 1.5 s limit per call: the second call's limit
    starts when the first is due, so none is stopped."""
    limits = Limits(stage_s=1.5, stage_s_per_media_s=0.0, decode_s=30.0)
    executor = RayExecutor(_Marking(name="decode", poison="-"), [_Marking(name="m", sleep_s=1.0, batch_size=1)],
                           limits=limits, max_actors=1)
    (shard,) = _run(executor, [_tasks([f"v{i}" for i in range(5)])])
    assert all(t.ok for t in shard), [t.error for t in shard if not t.ok]


def test_a_model_that_cannot_load_stops_the_run_in_one_line(ray_session):
    from pipeline.executor import ModelLoadError

    executor = RayExecutor(_Marking(name="decode", poison="-"), [_Broken(name="asr")])
    executor.start()
    with pytest.raises(ModelLoadError, match=r"^cannot load the asr model None: OSError: no weights here$"):
        list(executor.run_shards([_tasks(["a"])]))


@dataclass
class _Broken(Stage):
    def setup(self, device: str) -> None:
        raise OSError("no weights here")


def test_a_second_run_of_the_process_reuses_its_pools_and_one_with_other_stages_ends_them(ray_session):
    """The same stages: the pools a run left are taken over, models loaded. Other stages (another
    configuration): the old pools end first and give their CPUs back (the old executor's idle actors of
    the first configuration held every CPU and starved the second run's decodes)."""
    release_parked()
    decoder, stages = _Marking(name="decode", poison="-"), [_Marking(name="m", record=True), _Marking(name="n")]

    def run_once(stages):
        executor = RayExecutor(decoder, stages)
        executor.start()
        out = list(executor.run_shards([_tasks(["a", "b"])]))
        executor.pools_run = list(executor.pools)
        executor.stop(park=True)
        return executor, out

    def executor_pools(executor):
        return executor.pools_run

    first, out1 = run_once(stages)
    first_workers = [w for pool in executor_pools(first) for w in pool.workers]
    second, out2 = run_once(stages)
    assert second.stage_seconds.get("load models", 0.0) < 0.5, second.stage_seconds
    assert {t.models["m"] for t in out2[0]} <= {t.models["m"] for t in out1[0]}  # the same workers
    third, out3 = run_once([_Marking(name="m", sleep_s=0.01), _Marking(name="n", sleep_s=0.01)])
    assert all(t.ok for t in out3[0])
    # The first pools' workers were ended before the third run's started.
    for worker in first_workers:
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(worker.handle.setup.remote(), timeout=30)
    release_parked()


@dataclass
class _DeviceStage(Stage):
    """Loads onto the device it is given, for real: on ``cuda`` where torch has none, that raises."""

    def setup(self, device: str) -> None:
        import torch

        self.model = torch.zeros(1, device=device)


def test_a_gpu_actor_where_torch_sees_no_gpu_runs_on_cpu_instead_of_ending_the_run(ray_session):
    """Ray places GPU actors on nodes that declare GPUs (``--num-gpus``) whether torch can use them or not
    (none there, a broken driver): the actor says so and loads on CPU (torch.load of a CUDA checkpoint
    there raised and ended the run)."""
    from pipeline.executor.actor import StageActor

    actor = ray.remote(StageActor).options(num_cpus=0.25).remote(_DeviceStage(name="asr"), "cuda", 1)
    try:
        ready = ray.get(actor.setup.remote())
    finally:
        ray.kill(actor)
    assert ready.device == "cpu"


def test_cuda_asked_of_a_cluster_without_gpus_is_one_line(ray_session):
    from pipeline.executor import ModelLoadError

    with pytest.raises(ModelLoadError, match="device=cuda was asked for, but the Ray cluster has no GPU"):
        RayExecutor(_Marking(name="decode"), [_Marking(name="m")], device="cuda").start()


def test_pools_are_rebalanced_towards_the_slowest_stage_by_measured_cost(ray_session):
    """Both stages start equal (nothing measured yet); once each has finished videos, the one that costs
    eight times more per video gets more of the CPUs."""
    executor = RayExecutor(
        _Marking(name="decode", poison="-"),
        [_Marking(name="slow", sleep_s=0.4, batch_size=1), _Marking(name="fast", sleep_s=0.05, batch_size=1)],
        cpu_actor_cpus=0.25, rebalance_s=1.0,
    )
    (shard,) = _run(executor, [_tasks([f"v{i}" for i in range(30)])])
    report = executor.report()
    assert all(t.ok for t in shard)
    assert report["slow"]["actors"] > report["fast"]["actors"], report
    assert executor.target["slow"] > executor.target["fast"], executor.target
