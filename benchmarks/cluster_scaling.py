"""Does the executor scale out? The real executor on real loopback Ray clusters of 1, 2 and 4 nodes.

    .venv/bin/python benchmarks/cluster_scaling.py [--nodes 1 2 4] [--videos-per-node 64] [--shard-size 16]
                                                   [--code DIR]

One real cluster (tests/cluster.py), grown to each size in turn, with a fresh driver process for each row: a
head with ``--num-cpus 0`` (the GCS, the dashboard and the driver, which attaches to it; no stage work) and N
nodes of 4 CPUs and 2 GPUs each, declared: the GPUs are for scheduling only. The stages are stand-ins that
sleep a fixed time per video and declare resources as the real ones do, so what bounds throughput is the
declared resources and the executor, not this machine's cores; the last column says how busy the host's CPUs
were (near 100%, a row measures the machine as much as the executor).

Every stand-in records on each task where and when it worked (node, worker process, start, end), so the table
comes from the returned tasks alone, whatever the executor does inside:

    videos/s          videos / wall time of the timed run, which follows an untimed run of as many (models load, pools find their widths)
    speed-up          videos/s over the 1-node row's; efficiency = speed-up / nodes (goal >= 0.9)
    bottleneck busy   the model stage whose actors were busiest, and their busy seconds / (wall x its actors
                      seen) (goal >= 95%)
    steady busy       the same stage's busy share between the first call of its last actor to start and the last
                      call of its first actor to run out of work: the steady state, without filling and draining
    actors            per model stage, the actors seen working (asr/caption/embedding/summary)
    nodes used        nodes that ran any work

``--code DIR`` runs the ``pipeline`` package of another tree (driver and workers alike), e.g. the executor
before the rewrite: ``git archive 22a90dc pipeline schemas | tar -x -C /tmp/old``, then ``--code /tmp/old``.
Not part of the test suite.
"""
from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import ray.cloudpickle

from pipeline.config import Resources
from pipeline.stages.base import Stage
from pipeline.task import VideoTask

log = logging.getLogger("cluster_scaling")

ROOT = Path(__file__).resolve().parents[1]
NODE_CPUS, NODE_GPUS = 4, 2
# Seconds a video, and each stage's declared share of a node; asr is clearly the slowest. A fractional GPU share
# must fit on one GPU: with shares of at most 0.25 that sum to 0.75, one actor per stage per GPU (what the
# committed executor makes) always fits, however Ray spreads them. (Shares summing to exactly 1 left one actor
# of 16 unplaceable on 2 nodes, and that executor waiting for it forever.)
STAGES = {
    "asr": (0.2, Resources(cpus=0.25, gpus=0.25)),
    "caption": (0.1, Resources(cpus=0.25, gpus=0.2)),
    "embedding": (0.05, Resources(cpus=0.25, gpus=0.1)),
    "summary": (0.1, Resources(cpus=0.25, gpus=0.2)),
}
DECODE = (0.05, Resources(cpus=0.5))
BATCH = 4  # videos per stage call
RESULT = "RESULT "  # the driver's last line: this, then its measurements as JSON


@dataclass
class TracedTask(VideoTask):
    """A task that carries where and when each stage worked on it."""

    spans: list[tuple[str, str, str, float, float]] = field(default_factory=list)  # stage, node, worker, start, end


@dataclass
class Sleeping(Stage):
    """Sleeps ``seconds_per_video`` for each video of a call, and writes down on each where and when."""

    seconds_per_video: float = 0.0

    def process(self, tasks: list[TracedTask]) -> None:
        context = ray.get_runtime_context()
        start = time.time()  # wall clock: every process of a loopback cluster shares it
        time.sleep(self.seconds_per_video * len(tasks))
        span = (self.name, context.get_node_id(), context.get_worker_id(), start, time.time())
        for task in tasks:
            task.spans.append(span)


ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers cannot import this script


def _shards(prefix: str, videos: int, size: int) -> list[list[TracedTask]]:
    tasks = [TracedTask(f"{prefix}{i}", f"file:///{prefix}{i}.mp4", "fp", 1) for i in range(videos)]
    return [tasks[i : i + size] for i in range(0, videos, size)]


def drive(videos: int, shard_size: int, nodes: int, scale: float = 1.0) -> dict:
    """In a driver on the cluster (``RAY_ADDRESS``): run the videos through the executor, return the spans."""
    from pipeline.executor import RayExecutor, ensure_ray

    ensure_ray()
    decoder = Sleeping(name="decode", seconds_per_video=DECODE[0] * scale, resources=DECODE[1], batch_size=1)
    stages = [Sleeping(name=n, seconds_per_video=s * scale, resources=r, batch_size=BATCH) for n, (s, r) in STAGES.items()]
    executor = RayExecutor(decoder, stages)
    executor.start()
    try:
        list(executor.run_shards(_shards("warm", videos, shard_size)))  # models load, pools find their widths
        cpu_before, start = psutil.cpu_times(), time.time()
        done = [t for shard in executor.run_shards(_shards("v", videos, shard_size)) for t in shard]
        wall, cpu_after = time.time() - start, psutil.cpu_times()
    finally:
        executor.stop()
    total = sum(cpu_after) - sum(cpu_before)
    idle = (cpu_after.idle + cpu_after.iowait) - (cpu_before.idle + cpu_before.iowait)
    return {
        "executor": inspect.getsourcefile(RayExecutor),
        "wall_s": wall,
        "videos": len(done),
        "failed": [t.error for t in done if not t.ok],
        "host_cpu": 1 - idle / total if total else 0.0,
        "spans": sorted({span for t in done for span in t.spans}),
    }


@dataclass
class Row:
    nodes: int
    videos: int
    wall_s: float
    stages: dict[str, tuple[float, int]]  # model stage -> (busy share, actors seen)
    steady: dict[str, float]  # model stage -> busy share while all its actors were up and had work
    nodes_used: int
    host_cpu: float
    executor: str

    @property
    def rate(self) -> float:
        return self.videos / self.wall_s


def summarize(nodes: int, result: dict) -> Row:
    wall = result["wall_s"]
    stages, steady = {}, {}
    for name in STAGES:
        spans = [s for s in result["spans"] if s[0] == name]
        actors = len({s[2] for s in spans})
        stages[name] = (sum(s[4] - s[3] for s in spans) / (wall * actors) if actors else 0.0, actors)
        steady[name] = steady_share(spans)
    used = len({s[1] for s in result["spans"]})
    return Row(nodes, result["videos"], wall, stages, steady, used, result["host_cpu"], result["executor"])


def steady_share(spans: list) -> float:
    """The busy share of a stage's actors between the first call of the last actor to start and the last call
    of the first actor to run out of work: the run's steady state, without filling and draining the pipe."""
    by_worker: dict[str, list] = {}
    for span in spans:
        by_worker.setdefault(span[2], []).append(span)
    if not by_worker:
        return 0.0
    start = max(min(s[3] for s in own) for own in by_worker.values())
    end = min(max(s[4] for s in own) for own in by_worker.values())
    if end <= start:
        return float("nan")
    busy = sum(max(0.0, min(s[4], end) - max(s[3], start)) for s in spans)
    return busy / ((end - start) * len(by_worker))


def measure(args: argparse.Namespace) -> list[Row | str]:
    """One row per cluster size: one cluster, grown node by node, and a driver process on it for each size (a
    string says why that row failed)."""
    sys.path.insert(0, str(ROOT))  # the harness, tests/cluster.py; only here, so the driver's pipeline is --code's
    from tests.cluster import LoopbackCluster

    code = Path(args.code).resolve() if args.code else ROOT
    rows: list[Row | str] = []
    with tempfile.TemporaryDirectory(prefix="cluster-scaling-") as tmp:
        cluster = LoopbackCluster(tmp, head_cpus=0, extra_env={"PYTHONPATH": str(code)} if args.code else None)
        started = time.perf_counter()
        with cluster:
            log.info("head up in %.1f s", time.perf_counter() - started)
            for n in args.nodes:
                started = time.perf_counter()
                added = [cluster.add_node(NODE_CPUS, NODE_GPUS, wait=False) for _ in range(n + 1 - len(cluster.nodes))]
                for node in added:
                    cluster.wait_node(node)
                log.info("%d node(s) up; %d started in %.1f s", n, len(added), time.perf_counter() - started)
                rows.append(_row(cluster, n, code, args))
                row = rows[-1]
                log.info("%d node(s): %s", n, row if isinstance(row, str) else f"{row.rate:.1f} videos/s")
            ending = time.perf_counter()
        log.info("cluster torn down in %.1f s", time.perf_counter() - ending)
    return rows


def _row(cluster, nodes: int, code: Path, args: argparse.Namespace) -> Row | str:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--drive", "--videos", str(args.videos_per_node * nodes),
           "--shard-size", str(args.shard_size), "--cluster-nodes", str(nodes), "--scale", str(args.scale)]
    # The driver's working directory goes onto its workers' sys.path (Ray does that): the code's tree.
    try:
        run = subprocess.run(cmd, env=cluster.env(), cwd=code, capture_output=True, text=True, timeout=args.timeout_s)
    except subprocess.TimeoutExpired:
        return f"the driver did not finish in {args.timeout_s:.0f} s"
    lines = [line for line in run.stdout.splitlines() if line.startswith(RESULT)]
    if run.returncode or not lines:
        return f"the driver failed ({run.returncode}): {run.stderr.strip().splitlines()[-1:] or run.stdout[-300:]}"
    result = json.loads(lines[-1][len(RESULT):])
    if result["failed"]:
        return f"{len(result['failed'])} videos failed, e.g. {result['failed'][0]}"
    return summarize(nodes, result)


def table(rows: list[Row | str], nodes: list[int], args: argparse.Namespace) -> str:
    base = next((r for r in rows if isinstance(r, Row) and r.nodes == 1), None)
    lines = [
        "| nodes | videos | wall s | videos/s | speed-up | efficiency | bottleneck busy | steady busy | actors a/c/e/s "
        "| nodes used | host CPU |",
        "|---:|---:|---:|---:|---:|---:|---|---:|---|---:|---:|",
    ]
    for n, row in zip(nodes, rows):
        if isinstance(row, str):
            lines.append(f"| {n} | {args.videos_per_node * n} | — | — | — | — | {row} | | | | |")
            continue
        speedup = row.rate / base.rate if base else float("nan")
        name, (share, actors) = max(row.stages.items(), key=lambda item: item[1][0])
        widths = "/".join(str(a) for _, a in row.stages.values())
        lines.append(
            f"| {n} | {row.videos} | {row.wall_s:.1f} | {row.rate:.1f} | {speedup:.2f} | {speedup / n:.2f} "
            f"| {name} {share:.0%} ×{actors} | {row.steady[name]:.0%} | {widths} | {row.nodes_used}/{n} "
            f"| {row.host_cpu:.0%} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--videos-per-node", type=int, default=64)
    parser.add_argument("--shard-size", type=int, default=16)
    parser.add_argument("--code", help="a tree whose pipeline package to run (default: this one)")
    parser.add_argument("--timeout-s", type=float, default=300.0, help="for each driver")
    parser.add_argument("--scale", type=float, default=5.0,
                        help="times the costs above (default 5: on 2 host cores, shorter costs measure Ray's own "
                             "overhead on the host more than the executor)")
    parser.add_argument("--drive", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--videos", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cluster-nodes", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    if args.drive:
        print(RESULT + json.dumps(drive(args.videos, args.shard_size, args.cluster_nodes, args.scale)), flush=True)
        return

    args.nodes = sorted(set(args.nodes))
    rows = measure(args)
    executor = next((r.executor for r in rows if isinstance(r, Row)), "?")
    costs = ", ".join(f"{n} {s * args.scale:g} s" for n, (s, _) in {"decode": DECODE, **STAGES}.items())
    print(f"\n{executor}; nodes of {NODE_CPUS} CPUs and {NODE_GPUS} GPUs (declared), a --num-cpus 0 head; "
          f"{costs} a video, batches of {BATCH}, shards of {args.shard_size}; {os.cpu_count()} host cores\n")
    print(table(rows, args.nodes, args))


if __name__ == "__main__":
    main()
