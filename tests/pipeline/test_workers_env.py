"""Workers need nothing from the driver's machine: credentials reach them through the runtime environment
(never inside a pickled stage), media must be on storage every node reads, each node has its own model
cache, and a cluster that cannot be joined is one line.

The cluster tests run ``reelscope`` in a subprocess against a real two-node cluster on loopback
(tests/cluster.py), whose nodes have no AWS credentials of their own.
"""
from __future__ import annotations

import logging
import os
import pickle
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import ray.cloudpickle

from pipeline.config import ModelSpec, default_cache_dir, load_config
from pipeline.discover import video_id_for
from pipeline.executor import cluster
from pipeline.orchestrate.storage import split_secrets
from pipeline.run import build_stages
from pipeline.stages.decode import MediaDecoder
from pipeline.stages.model import ModelStage
from pipeline.task import VideoTask
from tests.cluster import LoopbackCluster, free_port

# Each credential with a value of its own, so that a leak shows which one.
SECRETS = {
    "key": "S-key-1", "secret": "S-secret-2", "token": "S-token-3",
    "client_kwargs": {"endpoint_url": "http://127.0.0.1:9", "region_name": "eu-west-1"},
}
NO_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_SESSION_TOKEN": "",
                  "AWS_EC2_METADATA_DISABLED": "true"}  # botocore takes an empty variable for an absent one


def test_split_secrets_gives_options_without_credentials_and_the_aws_variables(caplog):
    kept, env = split_secrets(SECRETS)
    assert kept == {"client_kwargs": {"endpoint_url": "http://127.0.0.1:9", "region_name": "eu-west-1"}}
    assert env == {"AWS_ACCESS_KEY_ID": "S-key-1", "AWS_SECRET_ACCESS_KEY": "S-secret-2",
                   "AWS_SESSION_TOKEN": "S-token-3"}
    botocore_spelling = {"client_kwargs": {"aws_access_key_id": "B-id", "aws_secret_access_key": "B-secret"}}
    assert split_secrets(botocore_spelling) == ({"client_kwargs": {}}, {"AWS_ACCESS_KEY_ID": "B-id",
                                                                       "AWS_SECRET_ACCESS_KEY": "B-secret"})
    with caplog.at_level(logging.WARNING):
        kept, env = split_secrets({"username": "u", "password": "P-word"})
    assert kept == {} and env == {}
    assert "password, username" in caplog.text and "P-word" not in caplog.text


def test_stages_travel_without_credentials_and_with_no_cache_of_the_driver(tmp_path):
    config = load_config("s3://media/in", "s3://media/out", "tiny", storage_options={
        **SECRETS, "client_kwargs": {**SECRETS["client_kwargs"], "aws_session_token": "S-ast-4"},
    })
    decoder, stages = build_stages(config)
    for blob in (pickle.dumps((decoder, stages)), ray.cloudpickle.dumps((decoder, stages))):
        assert b"S-" not in blob
    assert decoder.storage_options["client_kwargs"]["endpoint_url"] == "http://127.0.0.1:9"
    assert all(s.storage_options == decoder.storage_options for s in stages)
    assert config.storage_options["secret"] == "S-secret-2"  # the driver still lists and commits with them
    assert config.cache_dir is None and {s.cache_dir for s in stages} == {""}
    given = load_config("s3://media/in", "s3://media/out", "tiny", cache_dir=str(tmp_path))
    assert {s.cache_dir for s in build_stages(given)[1]} == {str(tmp_path)}
    assert given.fingerprint() == config.fingerprint()  # where models are cached says nothing of the rows


@dataclass
class _PathOnly(ModelStage):
    """A model stage whose model is the path its ref resolved to: what ``setup`` did, without loading it."""

    family: str = "whisper"

    def load(self, path: str, device: str) -> str:
        return path


class _Setup:
    def run(self, stage: ModelStage) -> tuple[str, str]:
        stage.setup("cpu")
        return stage.model, os.environ.get("REELSCOPE_CACHE", "")


# Ray's workers cannot import this test module: its classes travel by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def test_a_model_builds_in_the_cache_of_the_worker_it_loads_on(ray_session, tmp_path, monkeypatch):
    driver, node, shared = tmp_path / "driver", tmp_path / "node", tmp_path / "shared"
    monkeypatch.setenv("REELSCOPE_CACHE", str(driver))
    assert default_cache_dir() == driver
    actor = ray_session.remote(_Setup).options(
        num_cpus=0, runtime_env={"env_vars": {"REELSCOPE_CACHE": str(node)}}
    ).remote()
    stage = _PathOnly(spec=ModelSpec("tiny:whisper"), cache_dir="")
    model, seen = ray_session.get(actor.run.remote(stage), timeout=120)
    assert seen == str(node) and Path(model).is_relative_to(node) and Path(model).is_file()
    assert not driver.exists()
    # A cache the user names is taken as it is, on every node: it must be there (a shared mount).
    model, _ = ray_session.get(actor.run.remote(_PathOnly(spec=ModelSpec("tiny:whisper"), cache_dir=str(shared))))
    assert Path(model).is_relative_to(shared)
    ray_session.kill(actor)


def _decode_remote(decoder: MediaDecoder, task: VideoTask) -> VideoTask:
    return decoder.process_batch([task])[0]


def test_s3_media_are_read_on_a_worker_with_credentials_only_from_the_runtime_env(ray_session, s3, tmp_path):
    import s3fs

    bucket, opts = s3
    s3fs.S3FileSystem(**opts).put(str(_media(tmp_path) / "red.mp4"), f"{bucket}/media/red.mp4")
    uri = f"s3://{bucket}/media/red.mp4"
    kept, env = split_secrets(opts)
    decoder = MediaDecoder(storage_options=kept)
    assert b"testing" not in ray.cloudpickle.dumps(decoder)
    decode = ray_session.remote(_decode_remote)
    try:
        cluster.ensure_ray(env_vars=env)  # Ray is up already: its workers' environment is the job's, without them
        assert cluster.worker_runtime_env() == {"env_vars": env}
        # The worker's own environment holds no credentials (the session's Ray may have inherited some).
        runtime_env = {"env_vars": {**NO_CREDENTIALS, **cluster.worker_runtime_env()["env_vars"]}}
        task = VideoTask(video_id_for(uri), uri, "fp", None)
        done = ray_session.get(decode.options(runtime_env=runtime_env).remote(decoder, task))
        assert done.ok, done.error
        assert done.frames and done.probe.duration_s == pytest.approx(1.0, abs=0.1)
        # The same worker environment without them: the read fails, so the runtime environment carried them.
        bare = ray_session.get(decode.options(runtime_env={"env_vars": NO_CREDENTIALS}).remote(decoder, task))
        assert not bare.ok and bare.error.startswith("decode:") and "credentials" in bare.error.lower()
    finally:
        cluster.ensure_ray()


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    """A head that runs nothing (the driver attaches to it) and a node with 2 CPUs, neither with AWS
    credentials in its environment."""
    with pytest.MonkeyPatch.context() as mp:
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            mp.delenv(name, raising=False)
        with LoopbackCluster(tmp_path_factory.mktemp("two-nodes"), head_cpus=0) as nodes:
            nodes.add_node(num_cpus=2, env=NO_CREDENTIALS)
            yield nodes


def _media(tmp_path: Path) -> Path:
    """A folder with one short video in it."""
    from pipeline.media.synth import make_video

    (tmp_path / "media").mkdir(exist_ok=True)
    make_video(tmp_path / "media" / "red.mp4", [("red", 1.0)], size=(64, 48))
    return tmp_path / "media"


def _reelscope(*args, env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).with_name("reelscope")), *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=timeout)


def _one_line(done: subprocess.CompletedProcess) -> str:
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-3000:]
    assert lines[0].startswith("reelscope: error: ") and "Traceback" not in done.stderr
    return lines[0]


@pytest.mark.ray
def test_local_input_is_refused_when_other_nodes_cannot_read_it(two_nodes, tmp_path):
    line = _one_line(_reelscope("run", _media(tmp_path), "--output", tmp_path / "out", env=two_nodes.env()))
    assert f"input {tmp_path / 'media'} is on this machine's disk" in line
    assert "s3://" in line and "REELSCOPE_SHARED_FS=1" in line
    assert not (tmp_path / "out" / "videos").exists()


_CHECK = """
import json, os, ray
from pipeline.config import ConfigError
from pipeline.executor.cluster import check_reachable

ray.init()  # RAY_ADDRESS and the auth settings come from the cluster's env()
said = {}
for name, (input, media) in json.loads(os.environ["CASES"]).items():
    try:
        check_reachable(input, media)
        said[name] = "ok"
    except ConfigError as exc:
        said[name] = str(exc)
print(json.dumps(said))
"""


@pytest.mark.ray
@pytest.mark.parametrize("shared", ["", "1"], ids=["own-disk", "shared-fs"])
def test_what_check_reachable_refuses(two_nodes, tmp_path, shared):
    import json

    cases = {
        "folder": ["/data/media", []], "file-uri": ["file:///data/a.mp4", []],
        "s3": ["s3://b/media", ["s3://b/media/a.mp4"]],
        "s3-manifest-of-local-files": ["s3://b/list.txt", ["s3://b/a.mp4", "file:///data/b.mp4"]],
        "local-manifest-of-s3-objects": ["/data/list.txt", ["s3://b/a.mp4"]],
    }
    done = subprocess.run([sys.executable, "-c", _CHECK], capture_output=True, text=True, timeout=120,
                          env=two_nodes.env(CASES=json.dumps(cases), REELSCOPE_SHARED_FS=shared))
    assert done.returncode == 0, done.stderr[-3000:]
    said = json.loads(done.stdout.strip().splitlines()[-1])
    if shared:
        assert set(said.values()) == {"ok"}
        return
    assert said["s3"] == "ok"
    assert said["folder"].startswith("input /data/media is on this machine's disk, which the other 1 node(s)")
    assert said["file-uri"].startswith("input file:///data/a.mp4 is on this machine's disk")
    assert said["s3-manifest-of-local-files"].startswith("input s3://b/list.txt lists file:///data/b.mp4, which is on")
    # A manifest on the driver's disk is read by the driver alone: the media it lists are what the nodes read.
    assert said["local-manifest-of-s3-objects"] == "ok"


@pytest.mark.ray
def test_an_s3_run_on_a_cluster_gets_credentials_only_through_the_runtime_env(two_nodes, s3, s3_endpoint, tmp_path):
    import s3fs

    from pipeline.store import open_snapshot

    bucket, opts = s3
    s3fs.S3FileSystem(**opts).put(str(_media(tmp_path) / "red.mp4"), f"{bucket}/media/red.mp4")
    driver_cache = tmp_path / "driver-cache"
    env = two_nodes.env(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
                        AWS_ENDPOINT_URL=s3_endpoint, REELSCOPE_CACHE=str(driver_cache))
    done = _reelscope("run", f"s3://{bucket}/media", "--output", f"s3://{bucket}/tables", env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    videos = open_snapshot(f"s3://{bucket}/tables", opts).read("videos").to_pylist()
    assert [(v["uri"], v["status"], v["error"]) for v in videos] == [(f"s3://{bucket}/media/red.mp4", "ok", None)]
    # The models were built where they loaded, in the node's own cache, not in the driver's.
    node = two_nodes.nodes[1]
    assert {p.name for p in (node.cache / "tiny").glob("*/*") if p.is_dir()} >= {"whisper", "clip", "blip2", "llm"}
    assert not driver_cache.exists()


_JOB = """
import os, ray
from pipeline.executor.cluster import ensure_ray, worker_runtime_env

ensure_ray(env_vars={"AWS_ACCESS_KEY_ID": "job-id", "AWS_SECRET_ACCESS_KEY": "driver-secret"})
seen = ray.get(ray.remote(lambda: (os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"])).remote())
print("workers see", *seen, "and need", worker_runtime_env())
"""


@pytest.mark.ray
def test_a_ray_job_whose_submitter_gave_the_credentials_joins_without_a_conflict(two_nodes):
    from ray.job_submission import JobStatus, JobSubmissionClient

    jobs = JobSubmissionClient(two_nodes.dashboard_url, headers=two_nodes.headers())
    # Ray refuses a variable that both the job and the driver's ray.init set: ensure_ray leaves it to the job's.
    job = jobs.submit_job(entrypoint=f"{sys.executable} -c '{_JOB}'",
                          runtime_env={"env_vars": {"AWS_ACCESS_KEY_ID": "job-id"}})
    deadline = time.monotonic() + 90
    while not (status := jobs.get_job_status(job)).is_terminal():
        assert time.monotonic() < deadline, status
        time.sleep(0.5)
    logs = jobs.get_job_logs(job)
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    assert "workers see job-id driver-secret and need None" in logs


@pytest.mark.ray
@pytest.mark.parametrize("auth", [{"RAY_AUTH_TOKEN": "not-the-cluster-token"}, {"RAY_AUTH_MODE": None}],
                         ids=["wrong-token", "no-token-mode"])
def test_a_cluster_that_refuses_the_token_is_one_line(two_nodes, tmp_path, auth):
    env = two_nodes.env(RAY_gcs_server_port_wait_time_s="2")  # Ray's own retries: 20 s by default
    for name, value in auth.items():
        env.pop(name) if value is None else env.update({name: value})
    line = _one_line(_reelscope("run", _media(tmp_path), "--output", tmp_path / "out", env=env))
    assert f"the Ray cluster at {two_nodes.address} refused this process's authentication token" in line
    assert "RAY_AUTH_MODE=token" in line


def test_a_closed_port_is_one_line_at_once(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    address = f"127.0.0.1:{free_port()}"
    started = time.perf_counter()
    line = _one_line(_reelscope("run", _media(tmp_path), "--output", tmp_path / "out", "--ray-address", address,
                                env=env))
    assert f"cannot reach the Ray cluster at {address} (connection refused)" in line
    assert time.perf_counter() - started < 30
