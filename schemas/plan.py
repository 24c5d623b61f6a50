"""The shard plan: one planned shard, written by the planner and executed as written by a worker.

``list_and_shard`` plans every shard of a run once and writes each as ``shard-NNNNN.json``; the worker that
runs it reads the same class back and processes exactly these items under exactly this shard id, without
listing or planning again. The class writes and reads its own JSON, so the two sides cannot drift apart.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

PLAN_VERSION = 2  # 2: the videos version planned against; staging for partition replacements


@dataclass(frozen=True)
class PlannedItem:
    uri: str
    video_id: str
    input_fingerprint: str  # what the input looked like when planned (size, mtime, etag)
    size: int | None


@dataclass(frozen=True)
class ShardPlan:
    shard_id: str
    items: tuple[PlannedItem, ...]
    config_fingerprint: str  # the configuration planned for: a worker with another one refuses the shard
    partition: str | None  # e.g. "dt=2026-11-22"
    # The ``videos`` table version the shard was planned against (-1: none yet): the commit leaves out videos
    # that other runs committed into other shards after it (``pipeline.store.commit``).
    planned_version: int = -1
    staging: bool = False  # a partition replacement: commit into the run's staging tables, published at the end
    plan_id: str = ""  # this listing of the run: a run cleared and run again commits under a new one

    def to_json(self) -> str:
        return json.dumps({"version": PLAN_VERSION, **asdict(self)}, indent=1)

    @classmethod
    def from_json(cls, text: str | bytes) -> ShardPlan:
        try:
            data = json.loads(text)
            if data.pop("version") != PLAN_VERSION:
                raise ValueError("another plan version")
            items = tuple(PlannedItem(**item) for item in data.pop("items"))
            return cls(items=items, **data)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ValueError(f"not a reelscope shard plan (version {PLAN_VERSION}): {exc}") from None
