"""Query the outputs where they lie (a local folder or any fsspec URI): search, SQL, one video's digest.

Every query starts from a ``Snapshot``: the manifests read once, so that all four tables name the same set
of committed shards even while a writer commits new ones.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from pipeline.tables import Output, OutputError
from schemas import TABLES


class QueryError(ValueError):
    """The query cannot be answered as asked; the message is one line meant for the user."""


@dataclass(frozen=True)
class Snapshot:
    output: Output
    manifests: tuple[dict, ...]

    @property
    def is_local(self) -> bool:
        return "file" in _protocols(self.output.fs)

    def paths(self, table: str) -> list[str]:
        """Paths of a table's committed files on the output's filesystem."""
        return [self.output.file_path(m, table) for m in self.manifests]

    def urls(self, table: str) -> list[str]:
        """The same files as DuckDB opens them: plain paths when local, else through the registered fsspec."""
        paths = self.paths(table)
        return paths if self.is_local else [self.output.fs.unstrip_protocol(p) for p in paths]


def _protocols(fs) -> tuple[str, ...]:
    return (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)


def open_snapshot(uri: str, storage_options: Mapping[str, Any] | None = None) -> Snapshot:
    """The committed state of an output, or a one-line error when there is nothing to query."""
    output = Output(uri, storage_options)
    if not output.fs.exists(output.root):
        raise OutputError(f"output {uri} does not exist")
    manifests = output.manifests(all_partitions=True)
    if not manifests:
        raise OutputError(f"no reelscope tables under {uri} (run `reelscope run` first)")
    for m in manifests:
        missing = [t for t in TABLES if t not in m.files]
        if missing:
            raise OutputError(f"manifest of shard {m.shard_id} under {uri} names no {', '.join(missing)} file")
    return Snapshot(output, tuple(manifests))


TINY_NOTE = ("note: these tables were made with the tiny profile, whose models have random weights: "
             "their captions, transcripts and summaries are noise")


def made_with_tiny(manifests) -> bool:
    """Whether any shard was made with the ``tiny`` profile, whose text output means nothing."""
    return any(getattr(m, "profile", None) == "tiny" for m in manifests)


def fmt_time(seconds: float) -> str:
    minutes, s = divmod(max(seconds, 0.0), 60)
    hours, minutes = divmod(int(minutes), 60)
    return f"{hours}:{minutes:02d}:{s:04.1f}" if hours else f"{minutes:02d}:{s:04.1f}"
