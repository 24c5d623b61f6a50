"""The store under faults, with real processes: runs and redos killed (SIGKILL) at random points, every log
PUT performed and its reply lost, two runs at once, a run stopped between planning and commit and resumed
after another finished, a partition replacement killed midway, compaction and vacuum under a reader.

After each, a Delta reader (``DeltaTable.to_pyarrow_dataset``) and DuckDB over the same datasets see exactly
one ``videos`` row per input, every other row belongs to a video in its shard, nothing committed is missing
(``shards.check_invariants``). The commit path runs in ``committer.py`` processes (no models, no Ray): what a
run does after its stages, shard after shard.
"""
from __future__ import annotations

import collections
import json
import logging
import random
import re
import signal
import threading
import time
from urllib.parse import urlsplit

import pyarrow.compute as pc
import pytest

from pipeline.store import Output, open_snapshot, read_commits
from pipeline.store import lease as lease_mod
from pipeline.store.cas import Conflict, read_versioned, swap
from pipeline.store.lease import Lease, LeaseLost, LeaseRecord, lease_path
from pipeline.store.maintain import maintain
from schemas import TABLES
from tests.faultproxy import DroppingProxy
from tests.pipeline.store import shards as S

SEED = 20261202
KILLS = 20
INPUTS = [f"v{n:02d}" for n in range(16)]
K, M = 3, 2  # keyframes and segments per video
ROWS = ["--keyframes", str(K), "--segments", str(M)]
WARNED = re.compile(r"video (\S+) of shard (\S+) was committed in shard (\S+) by another run meanwhile")

log = logging.getLogger(__name__)


def _tags(output: Output) -> dict[str, set]:
    """Per table and video: the redo tags of its rows (one commit wrote all of a video's rows of a table)."""
    mixed = {}
    for name, column in (("keyframes", "caption"), ("segments", "text")):
        found = output.dataset(name)  # None: a run killed before it created the table
        rows = [] if found is None else found.to_table(columns=["video_id", "shard_id", column]).to_pylist()
        tags = collections.defaultdict(set)
        for r in rows:
            tags[(r["video_id"], r["shard_id"])].add(r[column].split(" ", 1)[1].lstrip("0123456789"))
        mixed[name] = {key: t for key, t in tags.items() if len(t) > 1}
    return mixed


def test_runs_and_redos_killed_at_random_points_never_lose_or_double_a_row(tmp_path, committer):
    out = Output(str(tmp_path / "out"))
    archive = [f"a{n:02d}" for n in range(36)]  # files keep arriving: run n lists the first 8 + 2n
    rng = random.Random(SEED)
    committed: set[str] = set()
    seen = collections.Counter()
    for n in range(KILLS):
        listed = archive[:8 + 2 * n]
        if n % 3 == 2:  # a redo of some committed videos and one more input
            ids = rng.sample(sorted(committed), min(3, len(committed)))
            ids += rng.sample([i for i in listed if i not in ids], 1)
            args = ["--force", f"--tag=-redo{n}", "--shard-size", "2"]
            seen["redos"] += 1
        else:  # a run over what is listed, in an order and with a shard size of its own (the shards differ)
            ids = rng.sample(listed, len(listed))
            args = ["--shard-size", str(rng.choice([2, 3]))]
        c = committer(f"run{n:02d}", out, ids, *args, *ROWS, "--run", f"run{n:02d}")
        planned = c.wait_for("planned")
        time.sleep(rng.uniform(0.0, 0.15 * len(planned["shards"])))  # a shard's five commits: 0.1 to 0.2 s
        c.kill()
        shards = [e for e in c.events if e["event"] == "committed"]
        seen["killed mid-run" if len(shards) < len(planned["shards"]) else "finished before the kill"] += 1
        seen["shards committed"] += len(shards)
        seen["shards planned"] += len(planned["shards"])
        committed |= c.committed()
        S.check_invariants(out, archive, committed=committed, strict=False, complete=False, keyframes=K, segments=M)
        assert _tags(out) == {"keyframes": {}, "segments": {}}  # a video's rows of a table: from one commit
    final = committer("final", out, archive, "--shard-size", "3", *ROWS, "--run", "final")
    assert final.finish() == 0, final.stderr[-2000:]
    before = S.check_invariants(out, archive, committed=committed, strict=False, keyframes=K, segments=M)
    maintain(out, retention_hours=0)
    S.check_invariants(out, archive, keyframes=K, segments=M)
    log.warning("kills: %s; videos with stray children before maintain: %s", dict(seen),
                {name: len(ids) for name, ids in before.stray.items()})
    assert seen["killed mid-run"] >= KILLS // 4 and seen["redos"] >= 5  # the kills did land mid-run


def _log_puts(method: str, path: str) -> bool:
    return method == "PUT" and "/_delta_log/" in path and path.split("?")[0].endswith(".json")


def _app_ids(output: Output, table: str) -> list[list[str]]:
    """The application ids each log entry of ``table`` carries, version by version."""
    folder = output.path(table, "_delta_log")
    entries = sorted(p for p in output.fs.ls(folder, detail=False) if p.endswith(".json"))
    out = []
    for path in entries:
        actions = [json.loads(line) for line in output.fs.cat_file(path).decode().splitlines() if line.strip()]
        out.append([a["txn"]["appId"] for a in actions if "txn" in a])
    return out


def test_every_log_put_performed_and_its_reply_lost(s3, s3_endpoint, committer):
    bucket, opts = s3
    endpoint = urlsplit(s3_endpoint)
    inputs = INPUTS[:6]
    with DroppingProxy(endpoint.hostname, endpoint.port) as proxy:
        proxy.drop_reply(_log_puts, times=1_000_000)
        through = Output(f"s3://{bucket}/out", {**opts, "client_kwargs": {"endpoint_url": proxy.url}})
        run = committer("proxied", through, inputs, "--shard-size", "2", *ROWS, "--run", "run-1")
        assert run.finish() == 0, run.stderr[-3000:]
        redo = committer("proxied-redo", through, inputs[:2], "--force", "--tag=-redo", *ROWS, "--run", "run-2")
        assert redo.finish() == 0, redo.stderr[-3000:]
    direct = Output(f"s3://{bucket}/out", opts)
    S.check_invariants(direct, inputs, committed=run.committed(), keyframes=K, segments=M)
    shards = len(run.events[0]["shards"]) + len(redo.events[0]["shards"])
    assert (len(run.events[0]["shards"]), len(redo.events[0]["shards"])) == (3, 1)
    commits = 5 * shards  # keyframes, segments, summaries, videos, _commits: one commit each per shard
    landed = run.stderr.count("landed although its reply was lost") + redo.stderr.count("landed although its reply")
    written_again = run.stderr.count("writing again") + redo.stderr.count("writing again")
    # Every log PUT was performed and lost its reply: the five tables' creations and every commit.
    assert len(proxy.performed_and_dropped) == 5 + commits
    assert all(_log_puts(*line.split()[:2]) for line in proxy.performed_and_dropped)
    assert landed == commits and written_again == 0
    # No commit made twice: one log entry per commit, each with an application id of its own.
    for name in (*TABLES, "_commits"):
        ids = _app_ids(direct, name)
        assert len(ids) == 1 + shards and ids[0] == [], (name, ids)  # version 0 creates the table
        own = [i for entry in ids[1:] for i in entry if not i.startswith("reelscope:videos:")]
        assert len(own) == len(set(own)) == shards, (name, own)
    assert len(read_commits(direct)) == shards
    log.warning("lost replies: %d log PUTs performed and dropped, %d commits found landed, %d written again",
                len(proxy.performed_and_dropped), landed, written_again)


def test_two_overlapping_runs(make_output, where, committer, tmp_path):
    out = make_output()
    # Run a lists the first inputs (shards of 2: the common videos last); run b the next ones (shards of 3:
    # the common videos first). Both plan from the same version, then commit at the same moment.
    n, common = (10, INPUTS[6:10]) if where == "local" else (6, INPUTS[3:6])  # moto serves S3 slowly
    go = tmp_path / "go"
    a = committer("a", out, INPUTS[:n], "--shard-size", "2", "--pause-after-plan", str(go), *ROWS, "--run", "run-a")
    b = committer("b", out, INPUTS[n - len(common):2 * n - len(common)], "--shard-size", "3",
                  "--pause-after-plan", str(go), *ROWS, "--run", "run-b")
    plans = {c: {sid for sid, _ in c.wait_for("planned")["shards"]} for c in (a, b)}
    go.touch()
    assert a.finish() == 0, a.stderr[-3000:]
    assert b.finish() == 0, b.stderr[-3000:]
    inputs = INPUTS[:2 * n - len(common)]
    S.check_invariants(out, inputs, committed=a.committed() | b.committed(), keyframes=K, segments=M)
    warnings = [(c, WARNED.findall(c.stderr)) for c in (a, b)]
    for c, found in warnings:  # each names the shard that left the video out and the other run's that holds it
        other = b if c is a else a
        for video, shard, holder in found:
            assert video in common
            assert shard in plans[c] and holder in plans[other], (video, shard, holder)
            assert S.shard_of(out)[video] == holder
    left_out = sum(len(found) for _, found in warnings)
    assert left_out == len(common)  # each common video committed by one run, left out by the other
    written_again = a.stderr.count("writing again") + b.stderr.count("writing again")
    log.warning("two runs at once (%s): %d video(s) left to the other run, %d commit(s) written again", where,
                left_out, written_again)


def _lease_record(output: Output) -> LeaseRecord:
    return LeaseRecord.from_json(output.fs.cat_file(lease_path(output)))


def test_a_run_stopped_between_planning_and_commit_resumes_after_another_finished(tmp_path, committer):
    out = Output(str(tmp_path / "out"))
    go = tmp_path / "go"
    # Run a plans v03, v04 | v00, v01 | v02, v05 | v06, v07 and is stopped before its first commit.
    order = ["v03", "v04", "v00", "v01", "v02", "v05", "v06", "v07"]
    a = committer("stopped", out, order, "--shard-size", "2", "--lease-ttl", "1.5", "--pause-after-plan", str(go),
                  *ROWS, "--run", "run-a")
    first_shard = a.wait_for("planned")["shards"][0][0]
    a.signal(signal.SIGSTOP)
    deadline = time.monotonic() + 30
    while _lease_record(out).expires_at > time.time():  # no heartbeat while it is stopped
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # Run b takes the stale lease over and commits v04..v11, then releases the lease.
    b = committer("other", out, INPUTS[4:12], "--shard-size", "3", "--lease-ttl", "1.5", *ROWS, "--run", "run-b")
    assert b.finish() == 0, b.stderr[-3000:]
    assert "taking over the stale lease of run-a" in b.stderr
    go.touch()
    a.signal(signal.SIGCONT)
    assert a.finish() == 3, a.stderr[-3000:]
    # As pipeline.run does: the shard in hand is committed (without what b took meanwhile), then the lost
    # lease stops the run; it never takes the lease back.
    assert "committer failed: LeaseLost: " in a.stderr and "now held by run-b" in a.stderr
    assert [e["shard"] for e in a.events if e["event"] == "committed"] == [first_shard]
    [(video, shard, holder)] = WARNED.findall(a.stderr)
    assert (video, shard) == ("v04", first_shard) and S.shard_of(out)["v04"] == holder
    record = _lease_record(out)
    assert record.owner == "run-b" and record.released
    S.check_invariants(out, INPUTS[:12], committed=b.committed() | {"v03"}, complete=False, keyframes=K, segments=M)
    assert sorted(S.shard_of(out)) == ["v03", *INPUTS[4:12]]
    final = committer("final", out, INPUTS[:12], "--shard-size", "2", *ROWS, "--run", "final")
    assert final.finish() == 0, final.stderr[-2000:]
    S.check_invariants(out, INPUTS[:12], keyframes=K, segments=M)


def test_a_stalled_run_does_not_take_the_lease_back(make_output, monkeypatch, caplog):
    out = make_output()
    monkeypatch.setattr(lease_mod, "TTL_S", 0.5)
    stalled = Lease(out, "run-a")
    stalled.acquire()  # then it stalls: no heartbeat
    time.sleep(0.6)
    with caplog.at_level(logging.WARNING, logger="pipeline.store.lease"):
        with Lease(Output(out.uri, out.storage_options), "run-b"):  # takes the stale lease over...
            assert _lease_record(out).owner == "run-b"
    assert any("taking over the stale lease of run-a" in r.getMessage() for r in caplog.records)
    assert _lease_record(out).released  # ...and has released it since
    stalled.renew()  # the stalled run resumes: its next heartbeat
    assert _lease_record(out).owner == "run-b" and _lease_record(out).released
    with pytest.raises(LeaseLost, match="now held by run-b"):
        stalled.check()
    stalled.renew()
    with pytest.raises(LeaseLost):
        stalled.check()
    assert _lease_record(out).owner == "run-b"
    Lease(out, "run-c").acquire()  # a released lease is free for the next run
    assert _lease_record(out).owner == "run-c"


def test_swap_is_a_compare_and_swap(make_output):
    out = make_output()
    path = out.path("x.json")
    out.fs.makedirs(out.root, exist_ok=True)
    swap(out.fs, path, b"1", None)
    with pytest.raises(Conflict):
        swap(out.fs, path, b"2", None)
    v1 = read_versioned(out.fs, path)
    swap(out.fs, path, b"2", v1.token)
    with pytest.raises(Conflict):  # a writer that read version 1 cannot overwrite version 2
        swap(out.fs, path, b"3", v1.token)
    assert read_versioned(out.fs, path).data == b"2"


def _partition_ids(output: Output, snapshot=None) -> dict[str, list[str]]:
    """Per table, the video ids of the output's partition: as a snapshot reads them, or as the tables are now."""
    where = pc.field(output.partition_column) == output.partition_value
    if snapshot is not None:
        return {name: sorted(snapshot.read(name, columns=["video_id"], filter=where).column("video_id").to_pylist())
                for name in TABLES}
    return {name: sorted(output.dataset(name).to_table(columns=["video_id"], filter=where).column("video_id")
                         .to_pylist()) for name in TABLES}


def test_a_partition_replacement_killed_midway_shows_the_old_or_the_new_partition(tmp_path, committer):
    day = Output(str(tmp_path / "out"), partition="dt=2026-11-22")
    other = Output(str(tmp_path / "out"), partition="dt=2026-11-21")
    old, new = [f"o{n}" for n in range(6)], [f"n{n:02d}" for n in range(12)]
    for n in range(0, len(old), 2):
        S.commit(day, f"{n:016x}", old[n:n + 2], keyframes=K, segments=M)
        S.commit(other, f"{n:016x}", old[n:n + 2], keyframes=K, segments=M)
    untouched = _partition_ids(other)
    expect = {"old": _partition_ids(day), "new": {
        "videos": new, "keyframes": sorted(new * K), "segments": sorted(new * M), "summaries": new}}
    rng = random.Random(SEED + 1)
    seen = collections.Counter()

    def published() -> int:
        return sum(day.table(name).transaction_version("reelscope:run-r:publish") is not None for name in TABLES)

    for attempt in range(8):
        c = committer(f"replace{attempt}", day, new, "--staging", "--publish", "--shard-size", "3", *ROWS,
                      "--run", "run-r")
        c.wait_for("publishing", poll=0.001)  # the staging commits first (the first attempt), then the publish
        # Kill once this many tables are published: each number in turn, then at random and a little later.
        tables = attempt if attempt <= 4 else rng.randint(0, 4)
        while published() < tables and c.proc.poll() is None:
            time.sleep(0.001)
        time.sleep(0.0 if attempt <= 4 else rng.uniform(0.0, 0.02))
        c.kill()
        done = any(r.kind == "publish" for r in read_commits(day))
        seen[f"{published()} of 4 tables published{', recorded' if done else ''}"] += 1
        # A snapshot reads the old partition whole, or the new one whole; so does the current videos table.
        snapshot = _partition_ids(day, open_snapshot(day.uri))
        assert snapshot in (expect["old"], expect["new"]), snapshot
        assert (snapshot == expect["new"]) is done
        assert _partition_ids(day)["videos"] in (expect["old"]["videos"], new)
        assert _partition_ids(other) == untouched
        if done:
            break
    final = committer("replace-final", day, new, "--staging", "--publish", "--shard-size", "3", *ROWS, "--run", "run-r")
    assert final.finish() == 0, final.stderr[-2000:]
    assert _partition_ids(day, open_snapshot(day.uri)) == _partition_ids(day) == expect["new"]
    assert _partition_ids(other) == untouched
    assert [r.kind for r in read_commits(day)].count("publish") == 1
    S.check_invariants(day, [*old, *new], complete=False, keyframes=K, segments=M)
    log.warning("partition replacement kills: %s", dict(seen))
    assert sum(n for outcome, n in seen.items() if "recorded" not in outcome) >= 4  # killed midway


def test_compaction_and_vacuum_while_a_pinned_reader_reads_and_a_writer_commits(tmp_path, committer):
    out = Output(str(tmp_path / "out"))
    first = INPUTS[:10]
    for n in range(0, len(first), 2):
        S.commit(out, f"{n:016x}", first[n:n + 2], keyframes=K, segments=M)
    snapshot = open_snapshot(out.uri)  # pinned just before the maintenance
    expected = {name: snapshot.read(name).num_rows for name in TABLES}
    writer = committer("writer", out, INPUTS, "--shard-size", "2", *ROWS, "--run", "writer")
    writer.wait_for("planned")
    failed, done = [], []

    def maintenance():
        try:
            done.extend(maintain(out, retention_hours=1))
        except Exception as exc:  # noqa: BLE001 - reported below
            failed.append(exc)

    thread = threading.Thread(target=maintenance)
    thread.start()
    reads = 0
    while thread.is_alive() or not reads:
        assert {name: snapshot.read(name).num_rows for name in TABLES} == expected
        reads += 1
    thread.join()
    assert not failed, failed
    assert writer.finish() == 0, writer.stderr[-2000:]
    assert {name: snapshot.read(name).num_rows for name in TABLES} == expected  # its files are younger than 1 h
    assert any(m.files_after < m.files_before for m in done), done
    S.check_invariants(out, INPUTS, keyframes=K, segments=M)
    log.warning("pinned reader: %d full reads during maintenance; %s", reads,
                {m.table: (m.files_before, m.files_after, m.vacuumed) for m in done})
    # Without a retention, vacuum deletes the files of the versions that reader pinned: it cannot read on.
    maintain(out, retention_hours=0)
    with pytest.raises(OSError):
        snapshot.read("keyframes")
    assert open_snapshot(out.uri).read("keyframes").num_rows == K * len(INPUTS)
