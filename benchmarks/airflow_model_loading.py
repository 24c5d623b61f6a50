"""How much of an Airflow run's shard-task time goes into loading models.

A real Ray head (``ray start --head``, with its dashboard) stands in for the cluster; the archive DAG runs
with ``dag.test()`` and ``ray_conn_id``, so each of its mapped shard tasks submits a Ray Job: a fresh driver
process per shard, as in production. Twice over the same 8 shards of tiny-profile videos:

- ``kept``: the default; the first job loads the models into detached actors, later jobs find them loaded;
- ``per shard``: ``models_idle_s: 0``; every job loads its own models and they end with it.

Load seconds come from each shard's result file (``load_s``), task seconds from Airflow's task instances.

    .venv/bin/python benchmarks/airflow_model_loading.py [--shards 8] [--videos-per-shard 8]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "dags"))


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_ray(tmp: Path) -> tuple[subprocess.Popen, int]:
    """A Ray head of its own (``--block``, in a new session, so that stopping it stops only it)."""
    port, dashboard = _port(), _port()
    head = subprocess.Popen(
        [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", f"--port={port}",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
         f"--num-cpus={os.cpu_count()}", "--object-store-memory=1000000000", f"--temp-dir={tmp}/r",
         "--disable-usage-stats"],
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    deadline = time.monotonic() + 180
    while True:  # up once its job agent takes a job (the dashboard answers before)
        try:
            from ray.job_submission import JobSubmissionClient

            JobSubmissionClient(f"http://127.0.0.1:{dashboard}").submit_job(entrypoint="true")
            return head, dashboard
        except (OSError, RuntimeError) as exc:
            if time.monotonic() > deadline or head.poll() is not None:
                _stop_ray(head)
                raise SystemExit(f"the Ray head did not start: {exc}") from None
            time.sleep(1)


def _stop_ray(head: subprocess.Popen) -> None:
    os.killpg(head.pid, signal.SIGTERM)
    try:
        head.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)


def _run(dag, conf: dict, out: Path) -> tuple[float, float, int]:
    """Sum of the shard tasks' seconds, sum of their load seconds, and how many shard tasks ran."""
    from schemas.run import ShardResult

    dr = dag.test(run_conf=conf)
    if dr.state != "success":
        states = sorted((ti.task_id, ti.map_index, ti.state) for ti in dr.get_task_instances())
        raise SystemExit(f"the DAG run ended {dr.state}: {states}")
    tis = [ti for ti in dr.get_task_instances() if ti.task_id == "run_shard"]
    task_s = sum((ti.end_date - ti.start_date).total_seconds() for ti in tis)
    load_s = sum(ShardResult.from_json(p.read_text()).load_s for p in out.glob("_plans/*/shard-*.result.json"))
    return task_s, load_s, len(tis)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--videos-per-shard", type=int, default=8)  # the DAGs' default shard_size
    args = parser.parse_args()

    from airflow_env import configure

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "WARNING"  # the table, not Airflow's task logs
    configure()
    os.environ.update({"REELSCOPE_RETRIES": "0", "RAY_AUTH_MODE": "disabled"})
    tmp = Path(tempfile.mkdtemp(prefix="rb"))  # short: Ray's socket paths live under it
    head, dashboard = _start_ray(tmp)
    os.environ["AIRFLOW_CONN_RAY_BENCH"] = f"http://127.0.0.1:{dashboard}"
    try:
        from airflow.dag_processing.dagbag import DagBag
        from airflow.models.pool import Pool
        from airflow.utils.db import initdb

        from operators import GPU_POOL
        from pipeline.media.synth import make_video

        initdb()
        Pool.create_or_update_pool(GPU_POOL, slots=1, description="bench", include_deferred=False)
        dag = DagBag(dag_folder=str(REPO / "dags")).dags["reelscope_archive"]
        media = tmp / "media"
        colours = ["red", "lime", "blue", "yellow", "white", "navy"]
        for n in range(args.shards * args.videos_per_shard):
            make_video(media / f"v{n:03d}.mp4", [(colours[n % 6], 1.0), (colours[(n + 1) % 6], 1.0)], tone_hz=440.0)
        per_shard = tmp / "per-shard.yaml"
        per_shard.write_text("models_idle_s: 0\n")
        rows = []
        for mode, config in (("per shard", str(per_shard)), ("kept", "")):
            out = tmp / f"out-{mode.replace(' ', '-')}"
            conf = {"input_uri": str(media), "output_uri": str(out), "shard_size": args.videos_per_shard,
                    "ray_conn_id": "ray_bench", "config_file": config}
            task_s, load_s, tasks = _run(dag, conf, out)
            rows.append((mode, tasks, task_s, load_s))
            print(f"{mode}: {tasks} shard tasks, {task_s:.1f} s, loading {load_s:.1f} s", file=sys.stderr, flush=True)
    finally:
        _stop_ray(head)
        shutil.rmtree(tmp, ignore_errors=True)

    base = rows[0][3]
    print(f"\n{args.shards} shards x {args.videos_per_shard} videos, tiny profile, {os.cpu_count()} CPUs, one Ray Job per shard\n")
    print("| models | shard tasks | task seconds | loading seconds | loading share | loading vs per shard |")
    print("| --- | --- | --- | --- | --- | --- |")
    for mode, tasks, task_s, load_s in rows:
        print(f"| {mode} | {tasks} | {task_s:.1f} | {load_s:.1f} | {load_s / task_s:.1%} | {load_s / base:.2f}x |")
    print(json.dumps({m: {"task_s": round(t, 1), "load_s": round(lo, 1)} for m, _, t, lo in rows}), file=sys.stderr)


if __name__ == "__main__":
    main()
