"""Query the outputs where they lie (a local folder or any fsspec URI): search, SQL, one video's digest.

Every query starts from a ``Snapshot`` (``pipeline.store.snapshot``): the four Delta tables pinned at the
versions of the newest commit record, so that they agree with each other even while a writer commits.
"""
from __future__ import annotations

from pipeline.store import OutputError, Snapshot, open_snapshot


class QueryError(ValueError):
    """The query cannot be answered as asked; the message is one line meant for the user."""


TINY_NOTE = ("note: these tables were made with the tiny profile, whose models have random weights: "
             "their captions, transcripts and summaries are noise")


def made_with_tiny(commits) -> bool:
    """Whether any shard was made with the ``tiny`` profile, whose text output means nothing."""
    return any(getattr(c, "profile", None) == "tiny" for c in commits)


def fmt_time(seconds: float) -> str:
    minutes, s = divmod(max(seconds, 0.0), 60)
    hours, minutes = divmod(int(minutes), 60)
    return f"{hours}:{minutes:02d}:{s:04.1f}" if hours else f"{minutes:02d}:{s:04.1f}"


__all__ = ["OutputError", "QueryError", "Snapshot", "TINY_NOTE", "fmt_time", "made_with_tiny", "open_snapshot"]
