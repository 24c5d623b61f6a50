"""What a scheduled run processes: the media that arrived in its data interval, and the partition it owns.

Two input layouts are understood. With a ``dt=YYYY-MM-DD/`` prefix per day under the input, a day belongs
to the interval that contains its midnight, and only those prefixes are listed (cheap on a large inbox).
Otherwise every object is listed and kept when its modification time falls in ``[start, end)``.
"""
from __future__ import annotations

import datetime as dt
import posixpath
import re
from typing import Any, Mapping

import fsspec

from pipeline.discover import InputError, MediaItem, discover, in_interval

DAY_PREFIX = re.compile(r"^dt=(\d{4}-\d{2}-\d{2})$")
LAYOUTS = ("auto", "dt", "mtime")


def as_utc(value: dt.datetime | str) -> dt.datetime:
    """A timezone-aware UTC datetime from a datetime (naive means UTC) or an ISO 8601 string."""
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    elif type(value) is not dt.datetime:
        # Airflow hands over pendulum DateTimes, whose arithmetic does not mix with plain timedeltas.
        value = dt.datetime.fromisoformat(value.isoformat())
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(dt.timezone.utc)


def partition_for_interval(start: dt.datetime | str, end: dt.datetime | str) -> str:
    """``dt=YYYY-MM-DD`` for intervals of whole UTC days; intervals that start within a day also carry
    the time, so that two runs of a sub-daily schedule never own (and clear) the same partition."""
    start, end = as_utc(start), as_utc(end)
    if end <= start:
        raise ValueError(f"empty data interval [{start.isoformat()}, {end.isoformat()})")
    whole_days = start.time() == dt.time(0) and (end - start) % dt.timedelta(days=1) == dt.timedelta(0)
    return f"dt={start:%Y-%m-%d}" if whole_days else f"dt={start:%Y-%m-%dT%H%M%S}"


def _day_prefixes(fs, root: str) -> dict[dt.date, str]:
    try:
        entries = fs.ls(root, detail=True)
    except FileNotFoundError:
        raise InputError(f"input not found: {root}") from None
    days = {}
    for entry in entries:
        match = DAY_PREFIX.match(posixpath.basename(entry["name"].rstrip("/")))
        if match and entry.get("type") == "directory":
            days[dt.date.fromisoformat(match.group(1))] = entry["name"]
    return days


def items_in_interval(
    input_uri: str,
    start: dt.datetime | str,
    end: dt.datetime | str,
    storage_options: Mapping[str, Any] | None = None,
    layout: str = "auto",
) -> list[MediaItem]:
    """Media under ``input_uri`` that belong to the interval ``[start, end)``, sorted by URI.

    ``layout`` is ``dt`` (day prefixes), ``mtime`` (modification time) or ``auto`` (``dt`` when the input's
    top level holds any ``dt=YYYY-MM-DD`` folder).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    start, end = as_utc(start), as_utc(end)
    opts = dict(storage_options or {})
    fs, root = fsspec.core.url_to_fs(input_uri, **opts)
    days = _day_prefixes(fs, root.rstrip("/")) if layout != "mtime" else {}
    if layout == "mtime" or (layout == "auto" and not days):
        return in_interval(discover(input_uri, opts), start, end)
    items: dict[str, MediaItem] = {}
    for day, path in sorted(days.items()):
        midnight = dt.datetime.combine(day, dt.time(0), tzinfo=dt.timezone.utc)
        if start <= midnight < end:
            items.update((i.uri, i) for i in discover(fs.unstrip_protocol(path), opts))
    return [items[k] for k in sorted(items)]
