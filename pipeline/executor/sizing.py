"""How many actors each stage gets: the cluster's live nodes, packed by measured cost per video.

Every stage gets one actor first (a run needs them all); then, one at a time, the stage that is slowest
per actor (measured seconds per video / actors) gets another, on the first node where its CPU share and
its GPU share fit (a fractional share on one GPU, as Ray places it), until nothing fits. Each node keeps CPUs for the decode tasks (``decode_reserve``), so model
actors, new or replacing lost ones, never starve them.
"""
from __future__ import annotations

from dataclasses import dataclass

EPS = 1e-6


@dataclass(frozen=True)
class Node:
    id: str
    cpus: float
    gpus: float


@dataclass(frozen=True)
class Demand:
    """What one more actor of a stage takes, what a video costs it (seconds, measured or assumed), and the
    most actors worth having (more than its videos' batches would idle)."""

    stage: str
    cpus: float
    gpus: float
    cost_s: float
    cap: int


def alive_nodes() -> list[Node]:
    import ray

    return [
        Node(n["NodeID"], float(n["Resources"].get("CPU", 0.0)), float(n["Resources"].get("GPU", 0.0)))
        for n in ray.nodes()
        if n.get("Alive")
    ]


def decode_reserve(node_cpus: float, decode_cpus: float) -> float:
    """CPUs of a node kept for decode tasks: a quarter of it, at least one decode's worth (none on a node
    with no CPUs to give, such as a head started with ``--num-cpus=0``)."""
    if node_cpus < decode_cpus:
        return node_cpus
    return max(decode_cpus, 0.25 * node_cpus)


def decode_slots(nodes: list[Node], decode_cpus: float) -> int:
    """How many decodes the reserved CPUs run at once (at least one)."""
    return max(1, sum(int(decode_reserve(n.cpus, decode_cpus) / decode_cpus + EPS) for n in nodes))


def widths(demands: list[Demand], nodes: list[Node], decode_cpus: float) -> dict[str, int]:
    """Actors per stage for these nodes (see the module's docstring)."""
    free = [_Room(n.cpus - decode_reserve(n.cpus, decode_cpus), n.gpus) for n in nodes]
    count = {d.stage: 0 for d in demands}

    def place(d: Demand) -> bool:
        if any(room.take(d.cpus, d.gpus) for room in free):
            count[d.stage] += 1
            return True
        return False

    for d in demands:
        if not place(d):
            count[d.stage] = 1  # Ray queues it until something frees; the run needs every stage
    while True:
        wanting = sorted((d for d in demands if count[d.stage] < d.cap), key=lambda d: -d.cost_s / count[d.stage])
        if not any(place(d) for d in wanting):
            return count


class _Room:
    """What is left of a node: CPUs, and each GPU apart, since Ray puts a fractional share on one GPU."""

    def __init__(self, cpus: float, gpus: float):
        self.cpus = cpus
        self.gpus = [1.0] * int(gpus + EPS) + ([gpus - int(gpus + EPS)] if gpus - int(gpus + EPS) > EPS else [])

    def take(self, cpus: float, gpus: float) -> bool:
        if self.cpus + EPS < cpus:
            return False
        if gpus >= 1.0 - EPS:  # whole GPUs
            whole = [i for i, g in enumerate(self.gpus) if g >= 1.0 - EPS][: round(gpus)]
            if len(whole) < round(gpus):
                return False
            for i in whole:
                self.gpus[i] = 0.0
        elif gpus > 0:
            fits = [i for i, g in enumerate(self.gpus) if g + EPS >= gpus]
            if not fits:
                return False
            best = min(fits, key=lambda i: self.gpus[i])  # the fullest GPU it fits on, as Ray packs them
            self.gpus[best] -= gpus
        self.cpus -= cpus
        return True


def bottleneck_s(demands: list[Demand], width: dict[str, int]) -> float:
    """Seconds per video of the slowest stage with these widths: what the run's throughput is bound by."""
    return max((d.cost_s / max(1, width.get(d.stage, 0)) for d in demands), default=0.0)
