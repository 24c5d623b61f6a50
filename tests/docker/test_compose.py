"""No Docker engine in CI: check the deployment files hang together (files they name exist, versions agree)."""
import re
import subprocess
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def _copy_sources(dockerfile: Path) -> list[str]:
    sources = []
    for line in dockerfile.read_text().splitlines():
        if line.startswith("COPY "):
            args = [a for a in line.split()[1:] if not a.startswith("--")]
            sources += args[:-1]
    return sources


def test_services_and_their_builds(compose):
    services = compose["services"]
    assert {"minio", "ray-head", "ray-worker", "airflow"} <= set(services)
    built = {}
    for name, service in services.items():
        if "build" in service:
            context = (DOCKER / service["build"]["context"]).resolve()
            dockerfile = context / service["build"]["dockerfile"]
            assert dockerfile.is_file(), (name, dockerfile)
            built[service["image"]] = dockerfile
    assert set(built) == {"reelscope-ray-worker:latest", "reelscope-ray-worker:gpu", "reelscope-airflow:latest"}
    for service in services.values():
        if service.get("image", "").startswith("reelscope-"):
            assert service["image"] in built  # every reelscope image is one that compose builds
    assert services["airflow"]["environment"]["REELSCOPE_RAY_CONN_ID"] == "ray_cluster"
    assert services["airflow"]["environment"]["AIRFLOW_CONN_RAY_CLUSTER"].startswith("http://ray-head:")


@pytest.mark.parametrize("name", ["Dockerfile.ray-worker", "Dockerfile.airflow"])
def test_dockerfiles_copy_files_that_exist_and_are_not_ignored(name):
    dockerfile = DOCKER / name
    ignore = (DOCKER / f"{name}.dockerignore").read_text().splitlines()
    allowed = [line[1:].rstrip("/") for line in ignore if line.startswith("!")]
    for source in _copy_sources(dockerfile):
        assert (REPO / source).exists(), source
        assert any(source == a or source.startswith(a + "/") for a in allowed), f"{source} is .dockerignored"
    assert "torch==2.13.0" in dockerfile.read_text()
    # What the tests ran with: every package installed under the pinned constraints, which the build sees.
    assert "constraints.txt" in _copy_sources(dockerfile)
    assert re.search(r"pip install [^\n]*-c [^\n]*constraints\.txt", dockerfile.read_text())


def test_the_head_does_no_work_and_says_when_it_is_up(compose):
    head = compose["services"]["ray-head"]
    assert "--num-cpus=0" in head["command"] and "--num-gpus=0" in head["command"]
    assert head["healthcheck"]["test"][:3] == ["CMD", "ray", "health-check"]
    for name in ("ray-worker", "ray-gpu-worker", "airflow"):
        assert compose["services"][name]["depends_on"]["ray-head"] == {"condition": "service_healthy"}, name


def test_each_node_keeps_its_model_cache_in_a_volume_of_its_own(compose):
    services = compose["services"]
    nodes = ("ray-head", "ray-worker", "ray-gpu-worker", "airflow")
    mounts = {name: dict(v.split(":", 1)[::-1] for v in services[name]["volumes"]) for name in nodes}
    caches = {name: re.search(r"REELSCOPE_CACHE=?(\S+)", (DOCKER / _dockerfile(services[name])).read_text()).group(1)
              for name in nodes}
    volumes = [mounts[name][caches[name]] for name in nodes]
    assert len(set(volumes)) == len(nodes) and set(volumes) <= set(compose["volumes"])


def test_cpu_images_are_not_built_on_cuda(compose):
    services = compose["services"]
    text = (DOCKER / "Dockerfile.ray-worker").read_text()
    assert "ARG RAY_FLAVOR=py311-cpu" in text and "ARG TORCH_INDEX=cpu" in text
    assert "build" not in services["ray-worker"] or "args" not in services["ray-worker"]["build"]
    assert services["ray-gpu-worker"]["build"]["args"] == {"RAY_FLAVOR": "py311-cu128", "TORCH_INDEX": "cu128"}
    (base,) = re.findall(r"^FROM (\S+)", (DOCKER / "Dockerfile.airflow").read_text(), flags=re.M)
    assert "cu" not in base.split(":")[-1]


def test_every_port_is_bound_to_loopback(compose):
    ports = [p for service in compose["services"].values() for p in service.get("ports", [])]
    assert ports and all(p.startswith("127.0.0.1:") for p in ports), ports


def _dockerfile(service: dict) -> str:
    return Path(service["build"]["dockerfile"]).name


def test_pinned_versions_match_the_tested_ones():
    text = (DOCKER / "Dockerfile.ray-worker").read_text() + (DOCKER / "Dockerfile.airflow").read_text()
    assert set(re.findall(r"ARG RAY_VERSION=(\S+)", text)) == {version("ray")}
    assert re.findall(r"ARG AIRFLOW_VERSION=(\S+)", text) == [version("apache-airflow")]


def test_entrypoint_is_valid_bash():
    script = DOCKER / "airflow-entrypoint.sh"
    assert script.stat().st_mode & 0o111
    subprocess.run(["bash", "-n", str(script)], check=True)
