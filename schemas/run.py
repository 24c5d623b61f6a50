"""The run's records: its plan, what running it did, and the run manifest, each written and read by one class.

``list_and_shard`` writes ``RunPlan`` (``_plans/<run>/plan.json``) next to the shard plans; ``run_plan``
reads it back, runs every shard in one pipeline and writes a ``ShardResult`` per shard
(``shard-NNNNN.result.json``) and a ``RunResult`` for the whole run (``run.result.json``);
``validate_and_publish`` reads them and writes the ``RunManifest`` (``_runs/<run>.json``). Unknown keys are
ignored and missing ones take their defaults, so records of older runs still read.
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, TypeVar

R = TypeVar("R")


class _Record:
    """JSON in and out for a frozen dataclass of plain values, nested records and tuples of records."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (lists for tuples), as XCom and a process's caller want them."""
        return json.loads(self.to_json())

    @classmethod
    def from_json(cls: type[R], text: str | bytes) -> R:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"not a {cls.__name__}: a JSON object was expected")
        return _build(cls, data)


def _build(cls: type[R], data: Mapping[str, Any]) -> R:
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            values[f.name] = _value(hints[f.name], data[f.name])
    return cls(**values)


def _value(hint: Any, value: Any) -> Any:
    """``value`` as ``hint`` says: a record from a mapping, a tuple of records from a list."""
    if value is None:
        return None
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # X | None: the X
        (hint,) = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is tuple:
        return tuple(_value(typing.get_args(hint)[0], v) for v in value)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _build(hint, value)
    return value


@dataclass(frozen=True)
class PlannedShard:
    uri: str  # of its ShardPlan
    shard_id: str
    videos: int


@dataclass(frozen=True)
class RunPlan(_Record):
    """What a run is: where from, where to, under which configuration, and its shards.

    ``config`` is the resolved run configuration (``pipeline.config.config_to_dict``) without credentials
    and without what belongs to the machine that runs it (model cache, Ray address): the run is executed
    with it, wherever that is, so the config file need only exist where the run was listed.
    """

    run_id: str
    input_uri: str
    output_uri: str
    config_fingerprint: str
    profile: str = "tiny"
    partition: str | None = None
    interval: tuple[str, ...] | None = None  # [start, end) as ISO times, for interval runs
    config_file: str | None = None  # where the configuration was read from, for the record
    config: Mapping[str, Any] = field(default_factory=dict)
    force: bool = False
    retry_failed: bool = False
    shard_size: int = 8
    media: int = 0  # inputs listed
    skipped: int = 0  # of those, already done
    replace_partition: bool = False  # shards commit into staging tables; publishing replaces the partition
    planned_version: int = -1  # the videos table's version planned against
    plan_id: str = ""  # this listing of the run (``pipeline.orchestrate.plan.commit_key``)
    shards: tuple[PlannedShard, ...] = ()
    planned_at: str = ""

    @property
    def pending(self) -> int:
        return sum(s.videos for s in self.shards)


@dataclass(frozen=True)
class Failure:
    uri: str
    error: str


@dataclass(frozen=True)
class ShardResult(_Record):
    """What running one shard did: its counts, and its failed inputs with their errors."""

    discovered: int = 0
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    shards: int = 0
    keyframes: int = 0
    segments: int = 0
    summaries: int = 0
    # Of the run that committed the shard (one pipeline runs every shard of a run): its seconds, and of those
    # the seconds finding or loading the models.
    wall_s: float = 0.0
    load_s: float = 0.0
    failures: tuple[Failure, ...] = ()

    def counts(self) -> dict[str, Any]:
        """The counts alone: what travels through XCom (failures stay in the file)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "failures"}


@dataclass(frozen=True)
class ShardRun:
    """One shard as its run saw it: videos planned, how many came out ok or failed, and whether an earlier try
    of the same run had committed it (it was skipped then, and its counts are that try's)."""

    shard_id: str
    videos: int
    ok: int = 0
    failed: int = 0
    committed_before: bool = False


@dataclass(frozen=True)
class RunResult(_Record):
    """What running a whole plan did: the run's counts (``ShardResult.counts`` of the run), each shard's
    outcome, and the tables it committed into (their URIs, and their versions after its last commit; the
    run's staging tables for a partition replacement)."""

    run_id: str
    plan_id: str = ""
    totals: Mapping[str, Any] = field(default_factory=dict)
    shards: tuple[ShardRun, ...] = ()
    tables: Mapping[str, str] = field(default_factory=dict)
    versions: Mapping[str, int] = field(default_factory=dict)
    # per stage (decode and each model pool): the Ray nodes that did its work, and for pools their width at
    # most, videos, model-busy seconds and busy share (``RayExecutor.report``)
    pools: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ShardOutcome:
    uri: str
    shard_id: str
    videos: int
    result: ShardResult | None = None  # None: the shard wrote no result (it was never run)


@dataclass(frozen=True)
class RunManifest(_Record):
    """A validated run: what it was, what the tables hold after it, and each shard's outcome."""

    run_id: str
    plan: str  # the plan's URI
    input_uri: str
    output_uri: str
    config_fingerprint: str
    pipeline_version: str
    schema_version: str
    partition: str | None = None
    interval: tuple[str, ...] | None = None
    profile: str = "tiny"
    inputs: int = 0
    processed: int = 0
    skipped: int = 0
    videos: Mapping[str, int] = field(default_factory=dict)  # by status
    rows: Mapping[str, int] = field(default_factory=dict)  # by table
    committed_shards: tuple[str, ...] = ()
    shards: tuple[ShardOutcome, ...] = ()
    versions: Mapping[str, int] = field(default_factory=dict)  # the tables' versions validated (and published)
    tables: Mapping[str, str] = field(default_factory=dict)  # the tables' URIs
    replaced_partition: bool = False  # the run replaced its partition (published its staging tables)
    validated_at: str = ""
