"""Time limits: a stage call may take ``stage_s`` plus ``stage_s_per_media_s`` per second of its videos,
counted from when its actor gets to it (after the calls queued there before it); a decode ``decode_s`` from
its own start (a decode reports it first)."""
from __future__ import annotations

from pipeline.config import Limits
from pipeline.executor.pools import Worker
from pipeline.executor.state import Call, Decode


def call_limit(limits: Limits, durations: list[float]) -> float:
    return sum(limits.stage_s + limits.stage_s_per_media_s * d for d in durations)


def due(worker: Worker, now: float, limit: float) -> float:
    """When a call given to ``worker`` now is due: ``limit`` after the calls queued there are due."""
    worker.busy_until = max(now, worker.busy_until) + limit
    return worker.busy_until


def wait_s(calls: list[Call], decodes: list[Decode], now: float) -> float | None:
    """How long to wait for a result before the next limit passes (None: none pending)."""
    dues = [c.due for c in calls if c.worker.killed_for is None] + [d.due for d in decodes if d.due is not None]
    return max(0.0, min(dues) - now) if dues else None


def overdue(calls: list[Call], decodes: list[Decode], now: float) -> tuple[list[Call], list[Decode]]:
    return (
        [c for c in calls if c.due <= now and c.worker.killed_for is None],
        [d for d in decodes if d.due is not None and d.due <= now],
    )


def call_expired(call: Call) -> str:
    return (f"exceeded its time limit of {call.limit:.0f} s (limits.stage_s + "
            "limits.stage_s_per_media_s x its duration)")


def decode_expired(limits: Limits) -> str:
    return f"exceeded its time limit of {limits.decode_s:g} s (limits.decode_s)"
