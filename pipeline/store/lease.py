"""The output lease: one run at a time works on an output (or one partition of it), so that no work is
done twice. It is not what keeps the tables right: Delta's commits are (``pipeline.store.commit``); a run
that lost its lease and commits anyway can neither duplicate nor lose a row.

The lease is a small JSON object in the output itself, ``<output>/_lease.json`` (``<output>/_lease/<partition>
.json`` for a partition), naming its owner, host, pid, heartbeat and expiry. It is created with a conditional
create and every later change (heartbeat, takeover, release) is a compare-and-swap on the version read
(``pipeline.store.cas.swap``: S3 ``IfNoneMatch``/``IfMatch``, a folder ``flock`` on a local disk), so of two runs
racing for it exactly one wins. A heartbeat thread renews it while it is still this owner's: once another
owner has written it (a takeover after this run stalled, even one released since), the heartbeat stops and
the lease stays lost; it is never taken back.

A lease is *stale* when its expiry has passed, when it was released, or when it is exclusive and its process
is gone from this very host (a run killed on a laptop need not be waited for); a stale lease is taken over
with a warning. Owners:

- a CLI run or ``maintain``: a fresh owner per process, released when it ends;
- an Airflow run: the plan's run key, *shared*. ``list_and_shard`` takes it (taking over a stale one) and
  plans under it; its mapped shard tasks, which write the same output concurrently on purpose, *join* it and
  heartbeat it while they run; ``validate_and_publish`` joins it last and releases it. A task that finds
  another owner there, live or not, refuses: another run has written the output since this one was
  planned, so the plan may be stale (plan the run again). A shared lease outlives its tasks by
  ``SHARED_TTL_S`` so that shards queued for a pool slot still find it.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import posixpath
import socket
import threading
import time
import uuid
from dataclasses import dataclass

from pipeline.store.cas import Conflict, read_versioned, swap
from pipeline.store.output import Output, OutputError

log = logging.getLogger(__name__)

TTL_S = 60.0  # an exclusive lease not renewed for this long is stale
HEARTBEAT_S = TTL_S / 4
SHARED_TTL_S = 30 * 60.0  # a run's shared lease: long enough for its shard tasks to get a slot
_RETRIES = 8  # compare-and-swap rounds lost to a sibling of the same owner before giving up


class LeaseHeld(OutputError):
    """Another live run holds the output."""


class LeaseLost(OutputError):
    """This run no longer holds the output's lease; it must not commit."""


@dataclass(frozen=True)
class LeaseRecord:
    owner: str
    host: str
    pid: int
    acquired_at: float  # epoch seconds: when this owner took the lease
    heartbeat_at: float
    expires_at: float
    shared: bool = False
    released: bool = False
    nonce: str = ""  # every write differs, so a local compare-and-swap never mistakes one version for another

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> LeaseRecord | None:
        """The record, or None for an unreadable one (a takeover replaces it)."""
        try:
            values = json.loads(data)
            return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values})
        except (ValueError, TypeError):
            return None

    def stale(self, now: float) -> bool:
        return self.released or now >= self.expires_at or (
            not self.shared and self.host == socket.gethostname() and not _alive(self.pid)
        )

    def describe(self) -> str:
        until = _when(self.expires_at)
        return f"{self.owner} (host {self.host}, pid {self.pid}, heartbeat {_when(self.heartbeat_at)}, expires {until})"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _when(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).isoformat(timespec="seconds")


def lease_path(output: Output) -> str:
    if output.partition:
        return posixpath.join(output.root, "_lease", f"{output.partition}.json")
    return posixpath.join(output.root, "_lease.json")


def new_owner(kind: str) -> str:
    """A fresh owner for one process's lease (``kind`` says what took it: run, maintain, migrate)."""
    return f"{kind}-{uuid.uuid4().hex[:12]}"


class Lease:
    """The lease on ``output`` for ``owner``. ``joins``: only take it while ``owner`` holds it or nobody
    ever did (an Airflow task of a planned run); otherwise a stale lease is taken over. As a context manager
    it is held (heartbeat) inside the block and released after it, unless shared (``release`` decides)."""

    def __init__(
        self, output: Output, owner: str, *, shared: bool = False, joins: bool = False, release: bool | None = None,
    ) -> None:
        self.output, self.owner, self.shared, self.joins = output, owner, shared, joins
        self.release_at_end = not shared if release is None else release
        self.path = lease_path(output)
        self.ttl = SHARED_TTL_S if shared else TTL_S
        self._expires = 0.0
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- one compare-and-swap round ------------------------------------------------------------------

    def _record(self, acquired_at: float, released: bool = False) -> LeaseRecord:
        now = time.time()
        return LeaseRecord(
            self.owner, socket.gethostname(), os.getpid(), acquired_at, now, now if released else now + self.ttl,
            self.shared, released, uuid.uuid4().hex,
        )

    def _write(self, record: LeaseRecord, token: str | None) -> None:
        data = record.to_json()
        swap(self.output.fs, self.path, data, token)
        self._expires = record.expires_at

    def _refuse(self, current: LeaseRecord | None, now: float) -> None:
        """Raise when ``current`` may not be taken by this owner."""
        if current is None or current.owner == self.owner:
            return
        where = self.output.uri + (f" (partition {self.output.partition})" if self.output.partition else "")
        if not current.stale(now):
            raise LeaseHeld(f"output {where} is in use by run {current.describe()}; wait for it or stop it")
        if self.joins:
            raise LeaseHeld(
                f"output {where} was taken by run {current.owner} at {_when(current.acquired_at)} after run "
                f"{self.owner} was planned; plan the run again"
            )
        if not current.released:  # a released lease is free: taking it is the normal case, nothing to say
            log.warning("taking over the stale lease of %s on %s", current.describe(), where)

    def acquire(self) -> None:
        """Take (or join, or renew) the lease; raise ``LeaseHeld`` when another live run has it."""
        fs = self.output.fs
        try:
            fs.makedirs(posixpath.dirname(self.path), exist_ok=True)
            for _ in range(_RETRIES):
                found = read_versioned(fs, self.path)
                current = LeaseRecord.from_json(found.data) if found else None
                now = time.time()
                self._refuse(current, now)
                mine = current is not None and current.owner == self.owner and not current.released
                try:
                    self._write(self._record(current.acquired_at if mine else now), found.token if found else None)
                    return
                except Conflict:
                    continue  # someone wrote in between: look again
        except OSError as exc:
            raise OutputError(f"output {self.output.uri} is not writable: {exc.__class__.__name__}: {exc}") from None
        raise LeaseHeld(f"output {self.output.uri}: could not take its lease, others keep changing it")

    def renew(self) -> None:
        """One heartbeat: renews the lease only while the record is still this owner's own (not released);
        otherwise the lease is lost for good: a stalled run must not take it back from a newer owner."""
        if self._lost is not None:
            return
        found = read_versioned(self.output.fs, self.path)
        current = LeaseRecord.from_json(found.data) if found else None
        if current is None or current.owner != self.owner or current.released:
            who = current.describe() if current is not None else "nobody (the lease was removed)"
            self._lost = f"the lease on {self.output.uri} is now held by {who}"
            log.error("lost the lease: %s", self._lost)
            return
        try:
            self._write(self._record(current.acquired_at), found.token)
        except Conflict:
            pass  # a sibling task of the same shared owner renewed it at the same moment: as good

    def check(self) -> None:
        """Raise ``LeaseLost`` unless this run still holds the lease (a run checks before each shard)."""
        if self._lost is None and time.time() >= self._expires:
            self._lost = f"the lease on {self.output.uri} expired at {_when(self._expires)} without a heartbeat"
        if self._lost is not None:
            raise LeaseLost(f"stopping: {self._lost}; what this run committed stays, the rest is left to that run")

    def release(self) -> None:
        """Mark the lease free (a released record, so that a later joiner sees who had it)."""
        found = read_versioned(self.output.fs, self.path)
        current = LeaseRecord.from_json(found.data) if found else None
        if found is None or current is None or current.owner != self.owner:
            return
        try:
            self._write(self._record(current.acquired_at, released=True), found.token)
        except Conflict:
            log.warning("lease on %s changed while being released; left to expire", self.output.uri)

    # -- holding it --------------------------------------------------------------------------------------

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self.renew()
            except OSError as exc:  # storage hiccup: the next beat tries again, check() sees the expiry
                log.warning("lease heartbeat on %s failed: %s", self.output.uri, exc)

    def __enter__(self) -> Lease:
        self.acquire()
        self._thread = threading.Thread(target=self._beat, name="reelscope-lease", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.release_at_end:
            self.release()
