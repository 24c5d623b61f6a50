"""Models load once per cluster, not once per shard: shard runs in separate processes (as Airflow task
processes and Ray Jobs are) that join one Ray cluster find the model actors an earlier shard left loaded;
left idle, those actors leave on their own."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import ray

from pipeline.executor import NAMESPACE, _StageActor, release_models
from pipeline.media.synth import make_video
from pipeline.orchestrate import list_and_shard, result_path
from pipeline.stages.base import Stage
from pipeline.store import open_output
from schemas.run import ShardResult


def _run_shard_process(shard_uri: str, address: str, cache_dir: str) -> ShardResult:
    env = {**os.environ, "RAY_ADDRESS": address}
    subprocess.run(
        [sys.executable, "-m", "pipeline.orchestrate", "run-shard", shard_uri, "--cache-dir", cache_dir],
        env=env, check=True, capture_output=True, timeout=300,
    )
    fs, path = open_output(result_path(shard_uri))
    return ShardResult.from_json(fs.cat_file(path))


def test_a_second_shard_process_finds_the_models_loaded(ray_session, model_cache, tmp_path):
    for n, colour in enumerate(["red", "blue"]):
        make_video(tmp_path / "in" / f"v{n}.mp4", [(colour, 1.0)], tone_hz=440.0)
    listing = list_and_shard(str(tmp_path / "in"), str(tmp_path / "out"), "reuse", shard_size=1)
    # The session's own actors give back their CPUs; the shard processes' detached ones take them.
    release_models()
    address = ray.get_runtime_context().gcs_address
    try:
        first, second = (_run_shard_process(uri, address, model_cache) for uri in listing["shards"])
        names = _named()
    finally:
        release_models()
    assert (first.ok, second.ok) == (1, 1)
    # Four models loaded by the first process; the second only looked them up.
    assert first.load_s > 1.0 and second.load_s < first.load_s / 5, (first.load_s, second.load_s)
    assert {name.split("-")[0] for name in names} == {"asr", "caption", "embedding", "summary"} and len(names) == 4


def test_an_idle_model_actor_leaves_on_its_own(ray_session):
    name = f"idle-{os.getpid()}"
    actor = ray.remote(_StageActor).options(name=name, namespace=NAMESPACE, num_cpus=0).remote(Stage(name="idle"), "cpu", 1.0)
    ray.get(actor.dim.remote())
    assert name in _named()
    deadline = time.monotonic() + 20
    while name in _named() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert name not in _named()
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(actor.dim.remote())


def _named() -> set[str]:
    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["namespace"] == NAMESPACE}


def test_a_second_run_in_the_same_process_finds_the_models_loaded(ray_session, model_cache, tmp_path):
    from pipeline.config import load_config
    from pipeline.run import run

    for n, colour in enumerate(["red", "blue"]):
        make_video(tmp_path / f"in{n}" / "v.mp4", [(colour, 1.0)])
    first, second = (
        run(load_config(str(tmp_path / f"in{n}"), str(tmp_path / f"out{n}"), "tiny", cache_dir=model_cache))
        for n in range(2)
    )
    assert (first.ok, second.ok) == (1, 1)
    # Between runs the process keeps its actors (Ray would end them once their creator's handle was dropped).
    assert second.stage_seconds["load models"] < 0.5, (first.stage_seconds, second.stage_seconds)
