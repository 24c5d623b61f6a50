"""The shard manifest: what a committed shard holds, written last by the writer and read by every reader.

``pipeline.tables.Output.write_shard`` commits a shard by writing its ``ShardManifest``; planning (which
videos are done), validation, search and SQL read the same class back. Unknown keys are ignored and missing
ones take their defaults, so manifests of older runs still read (their schema version tells them apart).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

from schemas import OLD_ROLE_NAMES


@dataclass(frozen=True)
class TableFile:
    path: str  # relative to the output root
    rows: int


@dataclass(frozen=True)
class VideoEntry:
    video_id: str
    input_fingerprint: str
    uri: str | None = None
    status: str = "ok"  # ok | failed


@dataclass(frozen=True)
class ModelRef:
    """How to load a model again: ``name`` is what the tables record (``embedding_model``...)."""

    ref: str
    name: str | None = None
    revision: str | None = None
    endpoint: str | None = None


@dataclass(frozen=True)
class StageStats:
    taken: int  # videos the stage took in ("in" in the file)
    ok: int  # of those, still ok after it
    failed: Mapping[str, int]  # failures it caused, by reason
    seconds: float


@dataclass(frozen=True)
class ShardManifest:
    config_fingerprint: str = ""
    videos: tuple[VideoEntry, ...] = ()
    # Set by the writer when it commits the shard.
    shard_id: str = ""
    schema_version: str = ""
    partition: str | None = None
    files: Mapping[str, TableFile] = field(default_factory=dict)
    # Provenance.
    pipeline_version: str | None = None
    profile: str | None = None
    models: Mapping[str, str] = field(default_factory=dict)
    model_refs: Mapping[str, ModelRef] = field(default_factory=dict)
    embedding_dim: int | None = None
    committed_at: str | None = None
    stages: Mapping[str, StageStats] = field(default_factory=dict)

    def to_json(self) -> str:
        data = asdict(self)
        data["stages"] = {name: {"in": s.pop("taken"), **s} for name, s in data["stages"].items()}
        return json.dumps(data, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> ShardManifest:
        data: dict[str, Any] = json.loads(text)
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["videos"] = tuple(_build(VideoEntry, v) for v in data.get("videos", []))
        values["files"] = {t: _build(TableFile, f) for t, f in data.get("files", {}).items()}
        values["models"] = {_role(k): v for k, v in (data.get("models") or {}).items()}
        values["model_refs"] = {_role(k): _build(ModelRef, r) for k, r in (data.get("model_refs") or {}).items()}
        values["stages"] = {
            _role(k): StageStats(s["in"], s["ok"], s["failed"], s["seconds"]) for k, s in (data.get("stages") or {}).items()
        }
        return cls(**values)


def _role(name: str) -> str:
    """A role or stage by its one name, also when an older manifest wrote another."""
    return OLD_ROLE_NAMES.get(name, name)


def _build(cls, values: Mapping[str, Any]):
    known = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in known})
