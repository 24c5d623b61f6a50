"""The commit record: one row of the ``_commits`` Delta table per committed shard (and per maintenance,
migration or partition replacement), written right after the shard's ``videos`` commit.

It carries what the four tables do not: how to load each model again (search embeds queries with the very
embedder of the keyframes), the profile, the embedding width, per-stage counts, and the versions of the four
tables just after the commit, which readers pin to read one consistent snapshot. Unknown keys are ignored
and missing ones take their defaults, so records of older versions still read.
"""
from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

import pyarrow as pa

from schemas import OLD_ROLE_NAMES, TABLES

@dataclass(frozen=True)
class ModelRef:
    """How to load a model again: ``name`` is what the tables record (``embedding_model``...)."""

    ref: str
    name: str | None = None
    revision: str | None = None
    endpoint: str | None = None


@dataclass(frozen=True)
class StageStats:
    taken: int  # videos the stage took in ("in" in the JSON)
    ok: int  # of those, still ok after it
    failed: Mapping[str, int]  # failures it caused, by reason
    seconds: float


@dataclass(frozen=True)
class CommitRecord:
    kind: str = "shard"  # shard | publish | maintain | migrate
    run: str = ""  # the run key that committed
    shard_id: str = ""
    partition: str | None = None  # e.g. "dt=2026-11-22"
    config_fingerprint: str = ""
    pipeline_version: str | None = None
    schema_version: str = ""
    profile: str | None = None
    models: Mapping[str, str] = field(default_factory=dict)
    model_refs: Mapping[str, ModelRef] = field(default_factory=dict)
    embedding_dim: int | None = None
    committed_at: str | None = None
    stages: Mapping[str, StageStats] = field(default_factory=dict)
    rows: Mapping[str, int] = field(default_factory=dict)  # rows the commit wrote, per table
    versions: Mapping[str, int] = field(default_factory=dict)  # each table's version just after the commit

    def to_json(self) -> str:
        data = asdict(self)
        data["stages"] = {name: {"in": s.pop("taken"), **s} for name, s in data["stages"].items()}
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> CommitRecord:
        data: dict[str, Any] = json.loads(text)
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["models"] = {_role(k): v for k, v in (data.get("models") or {}).items()}
        values["model_refs"] = {_role(k): _build(ModelRef, r) for k, r in (data.get("model_refs") or {}).items()}
        values["stages"] = {
            _role(k): StageStats(s["in"], s["ok"], s["failed"], s["seconds"]) for k, s in (data.get("stages") or {}).items()
        }
        return cls(**values)

    def to_row(self) -> dict[str, Any]:
        """The ``_commits`` row: the queryable scalars as columns, the whole record as JSON."""
        at = dt.datetime.fromisoformat(self.committed_at) if self.committed_at else dt.datetime.now(dt.timezone.utc)
        return {
            "kind": self.kind, "run": self.run, "shard_id": self.shard_id, "partition": self.partition,
            "config_fingerprint": self.config_fingerprint, "profile": self.profile,
            "embedding_dim": self.embedding_dim, "committed_at": at,
            **{f"{t}_version": self.versions.get(t) for t in TABLES},
            "record": self.to_json(),
        }


COMMITS = pa.schema(
    [
        pa.field("kind", pa.string(), nullable=False),
        pa.field("run", pa.string(), nullable=False),
        pa.field("shard_id", pa.string(), nullable=False),
        pa.field("partition", pa.string()),
        pa.field("config_fingerprint", pa.string(), nullable=False),
        pa.field("profile", pa.string()),
        pa.field("embedding_dim", pa.int32()),
        pa.field("committed_at", pa.timestamp("us", tz="UTC"), nullable=False),
        *(pa.field(f"{t}_version", pa.int64()) for t in TABLES),
        pa.field("record", pa.string(), nullable=False),
    ],
    metadata={"reelscope.table": "_commits"},
)


def _role(name: str) -> str:
    """A role or stage by its one name, also when an older record wrote another."""
    return OLD_ROLE_NAMES.get(name, name)


def _build(cls, values: Mapping[str, Any]):
    known = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in known})
