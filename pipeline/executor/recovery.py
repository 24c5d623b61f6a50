"""What becomes of the videos of a call that did not come back: tried again in calls of their own, or
failed, saying why. Recovery only requeues; the loop carries on with every other stage meanwhile."""
from __future__ import annotations

from pipeline.executor.state import Call, Item


def worker_died(exc: BaseException) -> str:
    """What a failed row says when the process working on it died: which error, and the likely causes."""
    return (
        f"the worker process died twice on it ({exc.__class__.__name__}): it crashes a decoder or library, "
        "or exhausts memory"
    )


def after_lost_call(call: Call, exc: BaseException, node_lost: bool) -> tuple[list[Item], list[tuple[Item, str]]]:
    """The videos of a call whose worker is gone, split into (to try again, to fail with why).

    A lost node is nobody's fault: its videos go again as they were. A call stopped for running over its
    time limit: alone, its video fails for it; in company, each goes again alone. Calls queued behind it at
    the same worker go again as they were. A worker that died on a call: each video goes again alone; one that
    was in two calls whose workers died fails."""
    killed_for = call.worker.killed_for
    if node_lost or (killed_for is not None and killed_for is not call):
        return list(call.items), []
    if killed_for is call:
        from pipeline.executor.deadlines import call_expired

        if len(call.items) == 1:
            return [], [(call.items[0], call_expired(call))]
        for item in call.items:
            item.alone = True
        return list(call.items), []
    retry, fail = [], []
    for item in call.items:
        item.deaths += 1
        if item.deaths >= 2:
            fail.append((item, worker_died(exc)))
        else:
            item.alone = True
            retry.append(item)
    return retry, fail
