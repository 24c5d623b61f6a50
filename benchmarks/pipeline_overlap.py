"""Do the stages overlap? The real executor over four stand-in model stages that take a fixed time a video.

    .venv/bin/python benchmarks/pipeline_overlap.py [--videos 32] [--shard-size 2]

The stand-ins sleep (no CPU used) for a fixed time per video, with fractional CPUs declared as the real
model stages do, behind a decode stage that costs nothing; so the run's wall time shows only how the
executor schedules them. Run one stage after another, a shard takes the sum of the four; pipelined, the
run approaches the slowest stage's total. One shard goes through first, untimed, while Ray starts its
worker processes. Prints one table with the wall time as a multiple of the
slowest stage's total and of the sum of all four (both measured in the same run). Not part of the test suite.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field

import ray.cloudpickle
from rich.console import Console
from rich.table import Table

from pipeline.config import Resources
from pipeline.executor import RayExecutor, ensure_ray
from pipeline.stages.base import Stage
from pipeline.task import VideoTask

SECONDS_PER_VIDEO = {"asr": 0.10, "caption": 0.06, "embedding": 0.03, "summary": 0.08}


@dataclass
class Sleeping(Stage):
    seconds_per_video: float = 0.0
    resources: Resources = field(default_factory=lambda: Resources(cpus=0.25))

    def process(self, tasks: list[VideoTask]) -> None:
        time.sleep(self.seconds_per_video * len(tasks))


ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers cannot import this script


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=32)
    parser.add_argument("--shard-size", type=int, default=2)
    args = parser.parse_args()
    ensure_ray(object_store_bytes=256 * 1024**2)
    stages = [Sleeping(name=name, seconds_per_video=s, batch_size=args.shard_size) for name, s in SECONDS_PER_VIDEO.items()]
    executor = RayExecutor(Sleeping(name="decode"), stages, max_actors=1)  # the overlap alone, one actor a stage
    executor.start()
    list(executor.run_shards([[VideoTask("warm", "file:///warm.mp4", "fp", 1)]]))  # Ray starts its workers
    tasks = [VideoTask(f"v{i}", f"file:///v{i}.mp4", "fp", 1) for i in range(args.videos)]
    shards = [tasks[i : i + args.shard_size] for i in range(0, len(tasks), args.shard_size)]
    start = time.perf_counter()
    done = [t for shard in executor.run_shards(shards) for t in shard]
    wall = time.perf_counter() - start
    executor.stop()
    assert len(done) == args.videos and all(t.ok for t in done)

    slowest = max(SECONDS_PER_VIDEO.values()) * args.videos
    total = sum(SECONDS_PER_VIDEO.values()) * args.videos
    table = Table(title=f"{args.videos} videos in shards of {args.shard_size}, 4 stand-in stages, one actor each")
    for column in ("measure", "seconds", "× slowest stage", "× sum of stages"):
        table.add_column(column, justify="left" if column == "measure" else "right")
    table.add_row("slowest stage's total (transcribe)", f"{slowest:.2f}", "1.00", f"{slowest / total:.2f}")
    table.add_row("sum of the four stages' totals", f"{total:.2f}", f"{total / slowest:.2f}", "1.00")
    table.add_row("executor wall time", f"{wall:.2f}", f"{wall / slowest:.2f}", f"{wall / total:.2f}")
    Console(width=120).print(table)


if __name__ == "__main__":
    main()
