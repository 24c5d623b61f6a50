"""Synthetic shards for the store tests: the four tables of a shard built from made-up videos (through
``pipeline.rows.build_tables``, as a run builds them), its ``CommitRecord``, a planning helper, and the
invariant checker every fault test ends with (a Delta reader and DuckDB over the same datasets).

Nothing here loads a model or starts Ray; imports stay light (no whisper, no torch), so that the committer
subprocesses of ``test_faults`` start fast.
"""
from __future__ import annotations

import collections
import contextlib
import datetime as dt
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np
import pyarrow as pa
import pytest

from pipeline.discover import MediaItem, Shard, plan_shards
from pipeline.media.probe import ProbeResult
from pipeline.rows import build_tables
from pipeline.store import Output, commit_shard, committed_videos
from pipeline.summarize import SummaryResult
from pipeline.task import FrameRecord, VideoTask
from schemas import TABLES
from schemas.commit import CommitRecord, ModelRef

DIM = 4
CONFIG = "cfg"
MODELS = {"asr": "w", "caption": "b", "embedding": "c", "summary": "l"}
NOW = dt.datetime(2026, 11, 23, tzinfo=dt.timezone.utc)


@dataclass(frozen=True)
class Segment:
    """What ``build_tables`` reads of a transcript segment (``pipeline.models.whisper.TranscriptSegment``
    without importing whisper)."""

    start_s: float
    end_s: float
    text: str


def task(video_id: str, *, keyframes: int = 2, segments: int = 1, failed: bool = False, dim: int = DIM,
         fingerprint: str | None = None, tag: str = "") -> VideoTask:
    """One finished video: ``keyframes`` frames with unit embeddings, ``segments`` transcript segments and a
    summary; or a failed one (a ``videos`` row only). ``tag`` goes into captions and texts, so a redo's
    rows can be told from the first ones."""
    t = VideoTask(video_id, f"file:///media/{video_id}.mp4", fingerprint or f"fp-{video_id}", 1000)
    if failed:
        t.fail("decode", "empty file (0 bytes)")
        return t
    t.probe = ProbeResult(duration_s=4.0, width=32, height=24, fps=25.0, num_frames=100, codec="h264",
                          has_audio=True, rotation=0, audio_codec="aac", audio_sample_rate=44100)
    vec = np.ones(dim, np.float32) / np.sqrt(dim)
    t.frames = [FrameRecord(i * 10, i * 0.4, b"\xff\xd8jpeg" + bytes([i % 256]), 32, 24, 0.5, f"frame {i}{tag}", vec)
                for i in range(keyframes)]
    t.segments = [Segment(float(i), i + 0.9, f"said {i}{tag}") for i in range(segments)]
    t.language = "en"
    t.summary = SummaryResult(title=f"T {video_id}{tag}", summary="S", timeline=[{"timestamp_s": 1.0, "text": "x"}],
                              status="ok", raw=None, chunks=1)
    t.models = dict(MODELS)
    return t


def tables(tasks: Iterable[VideoTask], shard_id: str, *, dim: int = DIM, config: str = CONFIG,
           processed_at: dt.datetime | None = None) -> dict[str, pa.Table]:
    return build_tables(list(tasks), shard_id=shard_id, config_fingerprint=config, embedding_dim=dim,
                        model_names={"asr": "w", "summary": "l"},
                        processed_at=processed_at or dt.datetime.now(dt.timezone.utc))


def shard_tables(shard_id: str, ids: Iterable[str], *, keyframes: int = 2, segments: int = 1, dim: int = DIM,
                 failed: Iterable[str] = (), tag: str = "", config: str = CONFIG,
                 processed_at: dt.datetime | None = None) -> dict[str, pa.Table]:
    """A shard's four tables for videos ``ids`` (those in ``failed`` failed to decode)."""
    bad = set(failed)
    return tables([task(i, keyframes=keyframes, segments=segments, failed=i in bad, dim=dim, tag=tag) for i in ids],
                  shard_id, dim=dim, config=config, processed_at=processed_at)


def record(run: str, shard_id: str, *, dim: int | None = DIM, config: str = CONFIG) -> CommitRecord:
    return CommitRecord(
        run=run, shard_id=shard_id, config_fingerprint=config, profile="test", models=dict(MODELS),
        model_refs={role: ModelRef(f"tiny:{name}", name) for role, name in MODELS.items()},
        embedding_dim=dim, committed_at=dt.datetime.now(dt.timezone.utc).isoformat(),
    )


def commit(output: Output, shard_id: str, ids: Iterable[str], *, run: str = "run-1", planned_version: int = -1,
           **kw: Any) -> CommitRecord | None:
    """Commit a synthetic shard (``kw``: see ``shard_tables``)."""
    dim = kw.get("dim", DIM)
    return commit_shard(output, shard_tables(shard_id, ids, **kw), record(run, shard_id, dim=dim),
                        planned_version=planned_version)


def items(ids: Iterable[str]) -> list[MediaItem]:
    """Media items as discovery would list them (the fingerprint is the one ``task`` gives)."""
    return [MediaItem(f"file:///media/{i}.mp4", i, 1000, None, f"fp-{i}") for i in ids]


def plan(output: Output, ids: Iterable[str], *, shard_size: int = 2, force: bool = False,
         retry_failed: bool = False) -> tuple[int, list[Shard]]:
    """``(videos version planned against, shards)`` for inputs ``ids``, as ``pipeline.run.plan`` does."""
    version, held = committed_videos(output)
    shards, _ = plan_shards(items(ids), held, CONFIG, shard_size, force=force, retry_failed=retry_failed)
    return version, shards


class Killed(BaseException):
    """What a SIGKILL does to a writer, in-process: nothing after it runs (``BaseException``, so that no
    ``except Exception`` on the way handles it)."""


@contextlib.contextmanager
def killed_at(table: str):
    """Inside the block, the writer dies as it is about to commit ``table``; the block must die so."""
    import pipeline.store.commit as commit_mod

    real = commit_mod.write_rows

    def dies(output, name, *args, **kwargs):
        if name == table:
            raise Killed
        return real(output, name, *args, **kwargs)

    commit_mod.write_rows = dies
    try:
        with pytest.raises(Killed):
            yield
    finally:
        commit_mod.write_rows = real


# -- reading ---------------------------------------------------------------------------------------------


def video_ids(output: Output, table: str = "videos") -> list[str]:
    found = output.dataset(table)
    return [] if found is None else sorted(found.to_table(columns=["video_id"]).column("video_id").to_pylist())


def counts(output: Output) -> dict[str, int]:
    """Rows per table, as a Delta reader sees them now."""
    return {name: (0 if output.dataset(name) is None else output.dataset(name).count_rows()) for name in TABLES}


@dataclass
class Checked:
    videos: collections.Counter  # video id -> videos rows
    children: dict[str, collections.Counter]  # table -> video id -> rows in the shard that holds the video
    stray: dict[str, set]  # table -> ids of videos with rows in a shard whose videos row is not there


def check_invariants(output: Output, inputs: Iterable[str], *, committed: Iterable[str] = (), strict: bool = True,
                     complete: bool = True, keyframes: int | None = None, segments: int | None = None) -> Checked:
    """The tables as a Delta reader (``DeltaTable.to_pyarrow_dataset``) and DuckDB over the same datasets see
    them: at most (``complete``: exactly) one ``videos`` row per input and none for anything else; every
    video of ``committed`` present; the children of each video, in the shard that holds it, once each
    (``keyframes`` and ``segments``: the rows per ok video, when every video has that many), none of a failed
    one; with ``strict``, no child without the ``videos`` row of its video in its shard (a shard killed between
    its children's commits and its ``videos`` commit leaves such rows, which readers skip, until ``maintain``
    deletes them)."""
    import duckdb

    inputs, committed = set(inputs), set(committed)
    # DeltaTable.to_pyarrow_dataset, with pyarrow's filesystem (``Output.dataset``: delta-rs's own handler can
    # abort a process at exit).
    datasets = {name: output.dataset(name) for name in TABLES if output.table(name) is not None}
    if "videos" not in datasets:
        assert not committed, f"no videos table, but {sorted(committed)} were committed"
        assert not complete or not inputs, "no videos table"
        return Checked(collections.Counter(), {}, {})
    rows = datasets["videos"].to_table(columns=["video_id", "shard_id", "status"]).to_pylist()
    videos = collections.Counter(r["video_id"] for r in rows)
    doubled = {v: n for v, n in videos.items() if n > 1}
    assert not doubled, f"videos rows doubled: {doubled}"
    assert set(videos) <= inputs, f"videos that are no input: {sorted(set(videos) - inputs)}"
    assert committed <= set(videos), f"committed videos missing: {sorted(committed - set(videos))}"
    if complete:
        assert set(videos) == inputs, f"inputs without a videos row: {sorted(inputs - set(videos))}"
    held = {(r["video_id"], r["shard_id"]) for r in rows}
    ok = {(r["video_id"], r["shard_id"]) for r in rows if r["status"] == "ok"}
    children, stray = {}, {}
    for name in TABLES[1:]:
        found = datasets[name].to_table(columns=["video_id", "shard_id"]).to_pylist() if name in datasets else []
        pairs = [(r["video_id"], r["shard_id"]) for r in found]
        children[name] = collections.Counter(v for v, s in pairs if (v, s) in held)
        stray[name] = {v for v, s in pairs if (v, s) not in held}
        if strict:
            assert not stray[name], f"{name} rows without their videos row: {sorted(stray[name])}"
        failed = {v for v, s in pairs if (v, s) in held - ok}
        assert not failed, f"{name} rows of failed videos: {sorted(failed)}"
    once = {v: n for v, n in children["summaries"].items() if n > 1}
    assert not once, f"summaries doubled: {once}"
    for name, per in (("keyframes", keyframes), ("segments", segments)):
        if per is not None:
            wrong = {v: children[name][v] for v, _ in ok if children[name][v] != per}
            assert not wrong, f"{name} rows per video, expected {per}: {wrong}"
    # Another engine over the very same datasets: DuckDB agrees.
    with duckdb.connect() as con:
        for name, dataset in datasets.items():
            con.register(name, dataset)
        n, distinct = con.execute("SELECT count(*), count(DISTINCT video_id) FROM videos").fetchone()
        assert (n, distinct) == (sum(videos.values()), len(videos)), (n, distinct)
        for name, key in (("keyframes", "frame_index"), ("segments", "segment_index"), ("summaries", "1")):
            if name not in datasets:
                continue
            belong, duplicated = con.execute(
                f"SELECT count(*), count(*) - count(DISTINCT (c.video_id, {key})) FROM {name} c "
                "JOIN videos v ON v.video_id = c.video_id AND v.shard_id = c.shard_id").fetchone()
            assert (belong, duplicated) == (sum(children[name].values()), 0), (name, belong, duplicated)
            orphans, = con.execute(
                f"SELECT count(DISTINCT c.video_id) FROM {name} c ANTI JOIN videos v "
                "ON v.video_id = c.video_id AND v.shard_id = c.shard_id").fetchone()
            assert orphans == len(stray[name]), (name, orphans)
    return Checked(videos, children, stray)


def shard_of(output: Output) -> Mapping[str, str]:
    """video id -> the shard whose ``videos`` row holds it."""
    found = output.dataset("videos")
    if found is None:
        return {}
    rows = found.to_table(columns=["video_id", "shard_id"]).to_pylist()
    return {r["video_id"]: r["shard_id"] for r in rows}
