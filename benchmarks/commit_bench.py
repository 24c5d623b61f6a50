"""What do Delta commits cost against the hand-made manifest protocol they replaced? Both in one run.

    .venv/bin/python benchmarks/commit_bench.py [--shards 24] [--videos 8] [--keyframes 12] [--rounds 3] [--s3]

Each round commits the same synthetic shards (every video with ``--keyframes`` keyframes of a 40 kB JPEG
and a 512-d embedding, 6 segments and a summary) into a fresh output twice, interleaved: with the manifest
writer of reelscope before Delta (``Output.write_shard`` at commit c0f4a34, loaded from git history into a
temporary folder) and with ``pipeline.store.commit_shard``; then redoes one video in each shard (the
``--retry-failed`` case), then reads every table back as reelscope's readers do. CPU seconds include child
processes (``resource.getrusage``); the table gives the best round of each and the ratio to the old
protocol. ``--s3`` writes to a moto server on loopback instead of a local folder. Not part of the test suite.
"""
from __future__ import annotations

import argparse
import datetime as dt
import importlib
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from rich.console import Console
from rich.table import Table

from pipeline.rows import build_tables
from pipeline.store import Output, commit_shard, open_snapshot
from pipeline.task import FrameRecord, VideoTask
from schemas.commit import CommitRecord

OLD = "c0f4a34"  # the last commit with the manifest protocol
REPO = Path(__file__).resolve().parent.parent
DIM = 512


def _old_modules(folder: Path):
    """The old ``pipeline.tables`` (and what it imports) as a package of its own, from git history."""
    root = folder / "old_reelscope"
    for path in ("pipeline/tables.py", "pipeline/atomic.py", "schemas/__init__.py", "schemas/manifest.py"):
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        text = subprocess.run(["git", "-C", str(REPO), "show", f"{OLD}:{path}"], check=True, capture_output=True,
                              text=True).stdout
        target.write_text(text.replace("from pipeline.", "from old_reelscope.pipeline.")
                          .replace("from schemas", "from old_reelscope.schemas"))
    for package in (root, root / "pipeline", root / "schemas"):
        (package / "__init__.py").touch()
    (root / "schemas" / "__init__.py").write_text(
        subprocess.run(["git", "-C", str(REPO), "show", f"{OLD}:schemas/__init__.py"], check=True,
                       capture_output=True, text=True).stdout)
    sys.path.insert(0, str(folder))
    return importlib.import_module("old_reelscope.pipeline.tables"), importlib.import_module("old_reelscope.schemas.manifest")


def _tasks(shard: int, videos: int, keyframes: int, rng) -> list[VideoTask]:
    jpeg = bytes(rng.integers(0, 256, 40_000, dtype=np.uint8))
    out = []
    for v in range(videos):
        t = VideoTask(f"{shard:08x}{v:08x}", f"file:///archive/{shard}/{v}.mp4", f"fp{v}", 10_000_000)
        t.probe = SimpleNamespace(duration_s=60.0, width=1280, height=720, fps=25.0, num_frames=1500, codec="h264",
                                  rotation=0, has_audio=True)
        for k in range(keyframes):
            e = rng.standard_normal(DIM).astype(np.float32)
            t.frames.append(FrameRecord(k * 100, k * 4.0, jpeg, 1280, 720, 0.5, f"caption {k}", e / np.linalg.norm(e)))
        t.segments = [SimpleNamespace(start_s=s * 10.0, end_s=s * 10.0 + 8, text=f"sentence {s}") for s in range(6)]
        t.language = "en"
        t.summary = SimpleNamespace(title="t", summary="s", timeline=[], status="ok", raw=None, chunks=1)
        t.models = {"asr": "a", "caption": "c", "embedding": "e", "summary": "l"}
        out.append(t)
    return out


def _tables(tasks, shard_id):
    return build_tables(tasks, shard_id=shard_id, config_fingerprint="cfg", embedding_dim=DIM,
                        model_names={"asr": "a", "summary": "l"}, processed_at=dt.datetime.now(dt.timezone.utc))


def _cpu() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _timed(fn) -> tuple[float, float]:
    cpu, wall = _cpu(), time.perf_counter()
    fn()
    return _cpu() - cpu, time.perf_counter() - wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=24)
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--keyframes", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--s3", action="store_true", help="write to a moto S3 server on loopback")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="commit-bench-"))
    old_tables, old_manifest = _old_modules(work)
    rng = np.random.default_rng(0)
    shards = [(f"{n:016x}", _tasks(n, args.videos, args.keyframes, rng)) for n in range(args.shards)]
    opts, base = None, str(work)
    if args.s3:
        import s3fs
        from moto.server import ThreadedMotoServer

        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
        server.start()
        endpoint = f"http://127.0.0.1:{server._server.server_port}"
        opts = {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": endpoint}}
        os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
        s3fs.S3FileSystem(**opts).mkdir("bench")
        base = "s3://bench"

    def old(uri: str, redo: bool) -> None:
        out = old_tables.Output(uri, opts)
        for shard_id, tasks in shards:
            chosen = tasks[:1] if redo else tasks
            videos = tuple(old_manifest.VideoEntry(t.video_id, t.input_fingerprint, t.uri) for t in chosen)
            out.write_shard(shard_id, _tables(chosen, shard_id),
                            old_manifest.ShardManifest(config_fingerprint="cfg", embedding_dim=DIM, videos=videos))

    def new(uri: str, redo: bool) -> None:
        out = Output(uri, opts)
        for shard_id, tasks in shards:
            chosen = tasks[:1] if redo else tasks
            record = CommitRecord(run=f"bench-{redo}", shard_id=shard_id, config_fingerprint="cfg", embedding_dim=DIM)
            commit_shard(out, _tables(chosen, shard_id), record, planned_version=-1)

    def old_read(uri: str) -> None:
        out = old_tables.Output(uri, opts)
        for table in ("videos", "keyframes", "segments", "summaries"):
            out.read_table(table)

    def new_read(uri: str) -> None:
        snapshot = open_snapshot(uri, opts)
        for table in ("videos", "keyframes", "segments", "summaries"):
            snapshot.read(table)

    best: dict[tuple[str, str], tuple[float, float]] = {}
    for r in range(args.rounds):
        for name, write, read in (("manifests (before)", old, old_read), ("Delta (now)", new, new_read)):
            uri = f"{base}/{name.split()[0]}-{r}"
            for step, fn in (("commit", lambda: write(uri, False)), ("redo 1 video a shard", lambda: write(uri, True)),
                             ("read 4 tables", lambda: read(uri))):
                cpu, wall = _timed(fn)
                key = (name, step)
                best[key] = min(best.get(key, (cpu, wall)), (cpu, wall))
    table = Table(title=f"{args.shards} shards x {args.videos} videos x {args.keyframes} keyframes "
                        f"({'moto S3' if args.s3 else 'local disk'}), best of {args.rounds}")
    for column in ("protocol", "step", "CPU s", "wall s", "CPU vs manifests"):
        table.add_column(column)
    for step in ("commit", "redo 1 video a shard", "read 4 tables"):
        base_cpu = best[("manifests (before)", step)][0]
        for name in ("manifests (before)", "Delta (now)"):
            cpu, wall = best[(name, step)]
            table.add_row(name, step, f"{cpu:.2f}", f"{wall:.2f}", f"{cpu / base_cpu:.2f}x")
    Console().print(table)


if __name__ == "__main__":
    main()
