"""A run's commit path without models, as a process that the fault tests can kill, stop and resume.

    python tests/pipeline/store/committer.py OUTPUT --ids a,b,c [--shard-size 2] [--keyframes 2] ...

It plans the inputs ``--ids`` against the output as ``pipeline.run.plan`` does (``committed_videos`` then
``plan_shards``), builds each shard's four tables from synthetic videos (``shards.py``) and commits shard
after shard with ``commit_shard``, like ``pipeline.run._execute``. ``--force`` redoes the listed inputs
(``--tag`` marks the redo's rows); ``--pause-after-plan FILE`` waits for FILE after planning (a run stopped
between planning and commit); ``--lease-ttl S`` holds the output's lease as a run does (with a TTL of S
seconds) and checks it after each shard; ``--staging`` commits into the run's staging tables and
``--publish`` then replaces the partition with them (nothing is done when this run published already, as
``validate_and_publish`` does).

stdout: one JSON line per event, flushed at once: ``planned`` (version, shards), ``committed`` (shard, ids,
versions), ``publishing``, ``published``, ``done``; a line is printed only after what it names has been
committed, so a killed process's output lists only what it committed. stderr: the store's log (INFO).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..")))

from pipeline.store import Output, commit_shard, publish_partition, read_commits  # noqa: E402
from tests.pipeline.store import shards as S  # noqa: E402

PAUSE_LIMIT_S = 120.0


def emit(event: str, **fields) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("output")
    p.add_argument("--ids", required=True, help="comma-separated video ids: the inputs")
    p.add_argument("--storage-options", default="{}", help="JSON")
    p.add_argument("--partition")
    p.add_argument("--run", default=f"run-{os.getpid()}")
    p.add_argument("--shard-size", type=int, default=2)
    p.add_argument("--keyframes", type=int, default=2)
    p.add_argument("--segments", type=int, default=1)
    p.add_argument("--force", action="store_true")
    p.add_argument("--tag", default="")
    p.add_argument("--pause-after-plan")
    p.add_argument("--lease-ttl", type=float)
    p.add_argument("--staging", action="store_true")
    p.add_argument("--publish", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("pipeline").setLevel(logging.INFO)

    target = Output(args.output, json.loads(args.storage_options), args.partition)
    ids = [i for i in args.ids.split(",") if i]
    lease = None
    if args.lease_ttl:
        from pipeline.store import lease as leases

        leases.TTL_S, leases.HEARTBEAT_S = args.lease_ttl, args.lease_ttl / 4
        lease = leases.Lease(target, args.run).__enter__()
    output = target.staging(args.run) if args.staging else target
    if args.publish and any(c.kind == "publish" and c.run == args.run for c in read_commits(target)):
        emit("planned", version=None, shards=[])  # published already (as validate_and_publish looks first)
        emit("done")
        return 0
    version, shards = S.plan(output, ids, shard_size=args.shard_size, force=args.force)
    emit("planned", version=version, shards=[[s.shard_id, [i.video_id for i in s.items]] for s in shards])
    if args.pause_after_plan:
        deadline = time.monotonic() + PAUSE_LIMIT_S
        while not os.path.exists(args.pause_after_plan):
            if time.monotonic() > deadline:
                emit("pause-timeout")
                return 4
            time.sleep(0.02)
    for shard in shards:
        shard_ids = [i.video_id for i in shard.items]
        tables = S.shard_tables(shard.shard_id, shard_ids, keyframes=args.keyframes, segments=args.segments,
                                tag=args.tag)
        done = commit_shard(output, tables, S.record(args.run, shard.shard_id), planned_version=version)
        emit("committed", shard=shard.shard_id, ids=shard_ids, versions=dict(done.versions) if done else None)
        if lease is not None:
            lease.check()  # as pipeline.run does: what is committed stays, the rest is left to the new owner
    if args.publish:
        emit("publishing")
        published = publish_partition(target, output, S.record(args.run, "publish"))
        emit("published", versions=dict(published.versions))
    if lease is not None:
        lease.__exit__(None, None, None)
    emit("done")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as exc:  # noqa: BLE001 - one line for the test to read, and a status of its own
        print(f"committer failed: {exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
              file=sys.stderr, flush=True)
        sys.exit(3)
