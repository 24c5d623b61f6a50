"""What the scheduling loop keeps about work under way: videos, the calls carrying them, and shards."""
from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.executor.pools import Worker
from pipeline.task import VideoTask


@dataclass(eq=False)
class Item:
    """One video under way: where it is, the ref of its task as the next stage takes it, what it cost."""

    shard: int
    task: VideoTask  # the driver's copy as admitted: what a failed row starts from
    ref: object = None  # its task (a one-element list) after the last stage it went through
    step: int = -1  # -1: decoding; else the model stage it waits for or is in; == stages: done
    duration_s: float = 0.0  # seconds of media (the per-video time limits are sized by it)
    deaths: int = 0  # workers that died with it in their call (a lost node not counted)
    alone: bool = False  # it was in a call that died or ran out of time: it goes in calls of its own
    result: VideoTask | None = None  # set when it failed on the driver's side (its task, failed)


@dataclass(eq=False)
class Call:
    """A stage call under way: its worker, its videos, the refs it returns, when it started, when it is due."""

    stage: int
    worker: Worker
    items: list[Item]
    status: object  # ref of its ``Done``
    outputs: list  # one ref per video
    started: float
    due: float  # when its worker should be done with it (queued calls before it count)
    limit: float  # its own time limit


@dataclass(eq=False)
class Decode:
    """A decode task under way: its video, its stream of results, and when it is due (from its own start)."""

    item: Item
    stream: object  # Ray's generator of the task's results: its start, its ``Decoded``, its task
    due: float | None = None  # set once it has started
    meta: object = None  # its ``Decoded``, once here


@dataclass
class Shard:
    """A shard's videos, in order, and how many are not through yet."""

    items: list[Item]
    left: int = field(init=False)

    def __post_init__(self) -> None:
        self.left = len(self.items)
