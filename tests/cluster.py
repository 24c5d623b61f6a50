"""A real multi-node Ray cluster on this machine, for tests and benchmarks: one ``ray start --block`` per node.

    with LoopbackCluster(tmp_path, head_cpus=1) as cluster:
        worker = cluster.add_node(num_cpus=1, num_gpus=2)  # GPUs declared for scheduling only
        subprocess.run([sys.executable, "driver.py"], env=cluster.env(), check=True)
        JobSubmissionClient(cluster.dashboard_url, headers=cluster.headers())
        cluster.kill_node(worker)  # SIGKILL to all its processes at once, as when a machine is lost
        cluster.wait_node(worker, alive=False)

Why it is built the way it is (Ray 2.60, found on this machine):

- Every node gets a ``--temp-dir`` of its own; a worker node takes the head's session name inside it, which
  is all Ray needs. The dirs are short ones under /tmp, whatever ``root`` is: Ray's Unix sockets live in
  ``<temp-dir>/session_<date>_<pid>/sockets/`` and a socket path may not exceed 107 bytes (pytest's
  ``tmp_path`` alone is 60). ``root`` holds each node's ``ray start`` output and its ``REELSCOPE_CACHE``.
- Ray replaces 127.0.0.1 with the host's address (``resolve_ip_for_localhost``), so every node has the same
  IP; nodes are told apart by ``--node-name``. A driver given ``address`` attaches to the head (Ray prefers
  the head among the nodes on its host), so a ``num_cpus=0`` head keeps the driver off the work.
- Only the dashboard agent's HTTP port is fixed by default (52365): two nodes on one host collide unless it
  is given, so it and the head's ports are all picked free; Ray picks the other ports itself.
- Token auth is always on, with a token of this cluster's own (``RAY_AUTH_TOKEN`` in every node's and
  driver's environment): the cluster neither depends on nor touches ``~/.ray/auth_token``, and a process in
  token mode with another token (the test session's own Ray writes ``~/.ray/auth_token`` and sets
  ``RAY_AUTH_MODE=token`` in its process) gets a 403, not a silent success.
- Ray starts its workers each in a process group of its own, so a node's process group is not all of it.
  A node's processes are found by their working directory, the node's temp dir, which they all inherit
  (Ray's workers do not change it, unless a job's ``working_dir`` does, and that is in the temp dir too), or
  by a marker variable in their environment (which those that set their title, ``ray::IDLE``, overwrite in
  /proc; drivers started with ``env()`` carry the cluster's). Killing a node SIGKILLs its group and all of
  these, then checks that none is left: its workers would otherwise linger a second or two, until they
  notice the lost raylet. Nothing else on the machine is touched: never ``ray stop``.
- The head's GCS declares a node dead after missed health checks, 15 s or more by default; here 5 to 10 s.
- A driver without the cluster's auth (or with another token) does not fail fast: ``ray.init`` retries for
  some 20 s, then raises ConnectionError. The dashboard answers 401 without a token, 403 with a wrong one.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psutil

_MARK = "REELSCOPE_LOOPBACK_RAY"  # "<cluster>:<node>:" in a node's processes, "<cluster>:" in its drivers
# GCS health checks: a node is declared dead after ~period x threshold of silence (default 3 s x 5, after a 5 s
# grace). Loose enough for 2 busy cores.
_HEALTH = {"RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "2000",
           "RAY_health_check_failure_threshold": "5"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Node:
    """One ``ray start --block`` and everything it started."""

    name: str
    head: bool
    process: subprocess.Popen
    temp_dir: Path  # Ray's own (--temp-dir): sockets, session logs
    cache: Path  # its REELSCOPE_CACHE
    log: Path  # the output of ``ray start``
    marker: str
    node_id: str = ""  # Ray's, once the node is up

    def pids(self) -> list[int]:
        """The live processes of this node, zombies left out."""
        return _members(self.temp_dir, self.marker)


@dataclass
class LoopbackCluster:
    """A head node and any number of other nodes, each a separate ``ray start`` on 127.0.0.1.

    Start it with ``with`` (or ``start()``); ``shutdown()`` kills every process it started. ``root`` holds the
    nodes' logs and model caches; it must outlive the cluster.
    """

    root: Path | str
    head_cpus: int = 1  # ray start takes whole CPUs; 0 keeps work off the head (the driver's node)
    head_gpus: int = 0
    head_resources: dict[str, float] | None = None
    object_store_bytes: int = 256 * 1024**2  # per node: Ray's default is 30% of RAM per node
    timeout_s: float = 120.0  # for a node to come up or go down (a head takes 10 s on 2 idle cores, 30 on busy ones)
    extra_env: dict[str, str] | None = None  # for every node and driver (PYTHONPATH, say)
    nodes: list[Node] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.id = secrets.token_hex(4)
        self._token = secrets.token_hex(16)
        self._temp = Path(tempfile.mkdtemp(prefix="ray-lb-", dir="/tmp"))
        self.port, self.dashboard_port = free_port(), free_port()

    @property
    def address(self) -> str:
        """The GCS address: for ``ray.init(address=...)``, ``RAY_ADDRESS`` or ``ray start --address``."""
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard_url(self) -> str:
        """For ``JobSubmissionClient`` (with ``headers()``) and the dashboard's REST API."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def head(self) -> Node:
        return self.nodes[0]

    def headers(self) -> dict[str, str]:
        """The HTTP headers that the dashboard (and so the job API) wants from a client."""
        return {"Authorization": f"Bearer {self._token}"}

    def env(self, **extra: str) -> dict[str, str]:
        """The environment a driver process needs: this process's, without its own Ray's settings, plus the
        cluster's address and auth (and a marker, so that ``shutdown`` ends drivers left behind)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") and k != _MARK}
        env.update(RAY_ADDRESS=self.address, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self._token)
        env[_MARK] = f"{self.id}:"
        env.update(self.extra_env or {})
        env.update(extra)
        return env

    def __enter__(self) -> LoopbackCluster:
        try:
            self.start()
        except BaseException:
            self.shutdown()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def start(self) -> Node:
        """Start the head node (with the dashboard, so the job API is there) and wait until it is up."""
        args = ["--head", "--port", str(self.port), "--dashboard-port", str(self.dashboard_port),
                "--include-dashboard", "true", "--ray-client-server-port", str(free_port())]
        return self._start("head", args, self.head_cpus, self.head_gpus, self.head_resources, _HEALTH)

    def add_node(
        self, num_cpus: int, num_gpus: int = 0, resources: dict[str, float] | None = None,
        env: dict[str, str] | None = None, wait: bool = True,
    ) -> Node:
        """Start another node, joined to the head, and wait until the cluster has it alive (``wait=False``: start
        several at once, then ``wait_node`` each)."""
        name = f"node{len(self.nodes)}"
        return self._start(name, ["--address", self.address], num_cpus, num_gpus, resources, env, wait)

    def _start(self, name: str, args: list[str], cpus: int, gpus: int, resources, env, wait: bool = True) -> Node:
        home = self.root / name
        home.mkdir(parents=True, exist_ok=True)
        temp = self._temp / name
        marker = f"{self.id}:{name}:"
        temp.mkdir(parents=True)
        node_env = self.env(**{"REELSCOPE_CACHE": str(home / "cache"), **(env or {})})
        node_env.pop("RAY_ADDRESS")
        node_env[_MARK] = marker
        cmd = [
            str(Path(sys.executable).with_name("ray")), "start", *args, "--block", "--disable-usage-stats",
            "--node-name", f"{self.id}-{name}", "--temp-dir", str(temp), "--num-cpus", str(cpus),
            "--num-gpus", str(gpus), "--object-store-memory", str(self.object_store_bytes),
            "--dashboard-agent-listen-port", str(free_port()),
        ]
        if resources:
            cmd += ["--resources", json.dumps(resources)]
        log = home / "ray-start.log"
        with open(log, "ab") as out:
            process = subprocess.Popen(cmd, env=node_env, stdout=out, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, cwd=temp, start_new_session=True)
        node = Node(name, name == "head", process, temp, Path(node_env["REELSCOPE_CACHE"]), log, marker)
        self.nodes.append(node)
        if wait:
            self.wait_node(node, alive=True)
        return node

    def state(self) -> list[dict]:
        """Every node the cluster knows, alive or dead, from the dashboard's state API."""
        url = f"{self.dashboard_url}/api/v0/nodes?limit=1000&detail=1"
        with urllib.request.urlopen(urllib.request.Request(url, headers=self.headers()), timeout=10) as reply:
            return json.load(reply)["data"]["result"]["result"]

    def wait_node(self, node: Node, alive: bool = True, timeout_s: float | None = None) -> None:
        """Wait until the cluster reports ``node`` alive (or dead): a dead node only once the GCS has given up on
        it, which takes some seconds after its processes are gone."""
        timeout_s = timeout_s or self.timeout_s
        deadline = time.monotonic() + timeout_s
        want = "ALIVE" if alive else "DEAD"
        last = ""
        while time.monotonic() < deadline:
            if alive and node.process.poll() is not None:
                raise RuntimeError(f"ray start for {node.name} exited ({node.process.returncode}):\n{_tail(node.log)}")
            try:
                mine = next((n for n in self.state() if n["node_name"] == f"{self.id}-{node.name}"), None)
            except OSError as exc:  # the dashboard is not up yet
                last = repr(exc)
            else:
                if mine and mine["state"] == want:
                    node.node_id = mine["node_id"]
                    return
                last = mine["state"] if mine else "not registered"
            time.sleep(0.25)
        raise TimeoutError(f"{node.name} not {want} after {timeout_s:.0f} s ({last}):\n{_tail(node.log)}")

    def kill_node(self, node: Node) -> None:
        """SIGKILL every process of the node at once (raylet, workers, agents; GCS and dashboard for the head),
        as when its machine is lost, and check that none survives. The cluster notices on its own
        (``wait_node(node, alive=False)``)."""
        _kill(node.temp_dir, node.marker, node.process, self.timeout_s)
        if node.pids():
            raise RuntimeError(f"processes of {node.name} survived SIGKILL: {node.pids()}")

    def pids(self) -> list[int]:
        """Every live process of this cluster: its nodes' and the drivers started with ``env()``."""
        return _members(self._temp, f"{self.id}:")

    def shutdown(self) -> None:
        """Kill every process of the cluster (the drivers started with ``env()`` too) and remove Ray's temp
        dirs; touches no other Ray on the machine."""
        try:
            for node in self.nodes:
                if node.process.poll() is None:
                    os.killpg(node.process.pid, signal.SIGKILL)
            _kill(self._temp, f"{self.id}:", None, self.timeout_s)
            for node in self.nodes:
                node.process.wait(timeout=self.timeout_s)
            left = self.pids()
            if left:
                raise RuntimeError(f"processes of the loopback cluster survived SIGKILL: {left}")
        finally:
            shutil.rmtree(self._temp, ignore_errors=True)


def _members(within: Path, marker: str) -> list[int]:
    """Live processes (not zombies) that run in ``within`` or carry ``marker`` (a prefix of the marker variable);
    never this process or its parents. Both, because Ray's processes that set their title (``ray::IDLE``,
    ``ray-dashboard-*``) overwrite the environment that /proc shows; their working directory stays."""
    spared = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    found = []
    for proc in psutil.process_iter(["pid", "status"]):
        if proc.info["pid"] in spared or proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            if Path(proc.cwd()).is_relative_to(within) or (proc.environ().get(_MARK) or "").startswith(marker):
                found.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _kill(within: Path, marker: str, process: subprocess.Popen | None, timeout_s: float) -> None:
    """SIGKILL ``process``'s group and the processes of ``_members`` until none is left (a raylet may fork a
    worker while the rest die)."""
    if process is not None and process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout_s
    while (pids := _members(within, marker)) and time.monotonic() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
    if process is not None:
        process.wait(timeout=timeout_s)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
