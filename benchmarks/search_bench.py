"""Top-10 keyframe search at archive scale: brute force (DuckDB, NumPy) against an approximate HNSW index.

    .venv/bin/python benchmarks/search_bench.py [--rows 1000000] [--dim 512] [--queries 30] [--workdir DIR]

Writes a synthetic keyframes table (clustered unit vectors, as CLIP embeddings are, 40 keyframes a video, one
``videos`` row each) with the real schemas and writer (``pipeline.store.commit_shard``: Delta tables), then
measures, in one run:

- DuckDB brute force over the Delta tables (``array_cosine_similarity`` over the ``keyframes`` view of
  ``pipeline.query.sql``, scanned through pyarrow; nothing to build);
- NumPy brute force over the vector cache, the path ``reelscope search`` takes: built once per snapshot
  with one scan, then opened (memory-mapped) by every call;
- a usearch HNSW index over the same vectors (``pip install -e '.[ann]'``): build and save, reopen as a
  memory-mapped view, latency, and recall@10 against the exact top 10.

Prints one table; ratios are against the DuckDB brute force of the same run. Not part of the test suite.
"""
from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
from rich.console import Console
from rich.table import Table

from pipeline.query import open_snapshot
from pipeline.query.sql import connect
from pipeline.query.vectors import load_vectors
from pipeline.store import Output, commit_shard, table_version
from schemas import SEGMENTS, SUMMARIES, VIDEOS, embedding_type, keyframes_schema
from schemas.commit import CommitRecord

log = logging.getLogger("search_bench")
MODEL = "bench:clip"
K = 10
PER_VIDEO = 40  # keyframes


def _video_id(i: int) -> str:
    return f"v{i // PER_VIDEO:08d}"


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _provenance(n: int, shard_id: str, now: dt.datetime) -> dict:
    return {
        "shard_id": pa.array([shard_id] * n),
        "pipeline_version": pa.array(["bench"] * n),
        "config_fingerprint": pa.array(["bench"] * n),
        "processed_at": pa.array([now] * n, pa.timestamp("us", tz="UTC")),
    }


def _keyframes(start: int, vectors: np.ndarray, shard_id: str, now: dt.datetime) -> pa.Table:
    n, dim = vectors.shape
    schema = keyframes_schema(dim)
    ids = np.arange(start, start + n)
    columns = {
        "video_id": pa.array([_video_id(i) for i in ids]),
        "frame_index": pa.array(ids % PER_VIDEO * 25, pa.int64()),
        "timestamp_s": pa.array(ids % PER_VIDEO * 1.0),
        "width": pa.array(np.full(n, 512, np.int32)),
        "height": pa.array(np.full(n, 288, np.int32)),
        "scene_score": pa.nulls(n, pa.float32()),
        "image": pa.array([b""] * n, pa.binary()),  # the benchmark never reads images
        "caption": pa.nulls(n, pa.string()),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), type=embedding_type(dim)),
        "caption_model": pa.nulls(n, pa.string()),
        "embedding_model": pa.array([MODEL] * n),
        **_provenance(n, shard_id, now),
    }
    return pa.table(columns, schema=schema)


def _videos(keyframes: pa.Table, shard_id: str, now: dt.datetime) -> pa.Table:
    """One ok row per video of ``keyframes``: readers show only the keyframes of videos present."""
    ids = sorted(set(keyframes.column("video_id").to_pylist()))
    n = len(ids)
    columns = {
        "video_id": pa.array(ids),
        "uri": pa.array([f"file:///bench/{v}.mp4" for v in ids]),
        "status": pa.array(["ok"] * n),
        "input_fingerprint": pa.array(ids),
        "num_keyframes": pa.array([PER_VIDEO] * n, pa.int32()),
        **_provenance(n, shard_id, now),
    }
    return pa.table({f.name: columns.get(f.name, pa.nulls(n, f.type)) for f in VIDEOS}, schema=VIDEOS)


def build_output(root: str, rows: int, dim: int, shard_rows: int, rng: np.random.Generator) -> np.ndarray:
    """Write ``rows`` keyframes in shards of ``shard_rows``; returns all embeddings (for the exact answers)."""
    centres = rng.standard_normal((max(rows // 500, 8), dim)).astype(np.float32)
    output = Output(root)
    now = dt.datetime.now(dt.timezone.utc)
    parts = []
    for n, start in enumerate(range(0, rows, shard_rows)):
        size = min(shard_rows, rows - start)
        vectors = _unit(centres[rng.integers(0, len(centres), size)] + 0.7 * rng.standard_normal((size, dim), np.float32))
        shard_id = f"{n:016x}"
        keyframes = _keyframes(start, vectors, shard_id, now)
        tables = {"videos": _videos(keyframes, shard_id, now), "keyframes": keyframes,
                  "segments": SEGMENTS.empty_table(), "summaries": SUMMARIES.empty_table()}
        record = CommitRecord(run="bench", shard_id=shard_id, config_fingerprint="bench", profile="bench",
                              models={"embedding": MODEL}, embedding_dim=dim)
        commit_shard(output, tables, record, planned_version=table_version(output, "videos"))
        parts.append(vectors)
    return np.concatenate(parts)


def _exact(data: np.ndarray, q: np.ndarray) -> np.ndarray:
    scores = data @ q
    top = np.argpartition(-scores, K)[:K]
    return top[np.argsort(-scores[top])]


def _timed(fn, queries) -> tuple[list[float], list]:
    times, results = [], []
    for q in queries:
        start = time.perf_counter()
        results.append(fn(q))
        times.append((time.perf_counter() - start) * 1000)
    return times, results


def _recall(found: list, truth: list[np.ndarray]) -> float:
    return float(np.mean([len(set(map(int, f)) & set(map(int, t))) / K for f, t in zip(found, truth)]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=30)
    ap.add_argument("--duckdb-queries", type=int, default=5, help="DuckDB takes seconds a query at 1M rows")
    ap.add_argument("--shard-rows", type=int, default=100_000)
    ap.add_argument("--workdir", help="where to write the synthetic table (default: a temporary folder)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    rng = np.random.default_rng(0)
    workdir = args.workdir or tempfile.mkdtemp(prefix="reelscope-bench-")
    root = str(Path(workdir) / "tables")

    start = time.perf_counter()
    data = build_output(root, args.rows, args.dim, args.shard_rows, rng)
    log.info("wrote %d keyframes (%d-d) in %.1f s under %s", args.rows, args.dim, time.perf_counter() - start, root)
    # Queries near stored keyframes: every one has true neighbours to find.
    queries = _unit(data[rng.integers(0, len(data), args.queries)] + 0.3 / np.sqrt(args.dim) * rng.standard_normal((args.queries, args.dim), np.float32))
    truth = [_exact(data, q) for q in queries]
    rows = []  # (method, build once s, open per call s, latencies ms, recall)

    snapshot = open_snapshot(root)
    con = connect(snapshot)
    row_of = {(_video_id(i), i % PER_VIDEO * 25): i for i in range(args.rows)}

    def duck(q):
        found = con.execute(
            f"SELECT video_id, frame_index FROM keyframes ORDER BY array_cosine_similarity(embedding, $q::FLOAT[{args.dim}]) "
            "DESC LIMIT 10", {"q": q.tolist()}).fetchall()
        return [row_of[r] for r in found]

    times, found = _timed(duck, queries[: args.duckdb_queries])
    rows.append(("DuckDB brute force over the Delta tables", 0.0, 0.0, times, _recall(found, truth)))

    cache = str(Path(workdir) / "cache")
    start = time.perf_counter()
    load_vectors(con, snapshot, MODEL, args.dim, cache)
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    vectors = load_vectors(con, snapshot, MODEL, args.dim, cache)
    open_s = time.perf_counter() - start
    times, found = _timed(lambda q: [row_of[(v, f)] for v, _, _, f in vectors.top(q, K)], queries)
    rows.append(("NumPy brute force over the vector cache (search)", build_s, open_s, times, _recall(found, truth)))

    try:
        from usearch.index import Index
    except ImportError:
        log.warning("usearch is not installed (pip install -e '.[ann]'): no index measured")
    else:
        ids = np.array([row_of[k] for k in zip(vectors.keys.column("video_id").to_pylist(),
                                                vectors.keys.column("frame_index").to_pylist())])
        index = Index(ndim=args.dim, metric="ip", dtype="f16", connectivity=16, expansion_add=128, expansion_search=64)
        start = time.perf_counter()
        index.add(ids, np.asarray(vectors.matrix), threads=os.cpu_count() or 1)
        path = str(Path(workdir) / "keyframes.usearch")
        index.save(path)
        build_s = time.perf_counter() - start
        del index
        start = time.perf_counter()
        view = Index.restore(path, view=True)
        open_s = time.perf_counter() - start
        times, found = _timed(lambda q: view.search(q, K).keys, queries)
        rows.append(("usearch HNSW (f16, M=16, ef=64), memory-mapped", build_s, open_s, times, _recall(found, truth)))

    base = statistics.median(rows[0][3])
    out = Table(title=f"top-{K} search over {args.rows:,} keyframes x {args.dim}-d on {os.cpu_count()} CPUs "
                      f"({args.queries} queries; DuckDB: {args.duckdb_queries})")
    for col in ("method", "build once (s)", "open per call (s)", "p50 (ms)", "p95 (ms)", "p50 vs DuckDB", "recall@10"):
        out.add_column(col, justify="left" if col == "method" else "right")
    for method, build, opened, times, recall in rows:
        p50, p95 = statistics.median(times), float(np.percentile(times, 95))
        out.add_row(method, f"{build:.2f}", f"{opened:.3f}", f"{p50:.1f}", f"{p95:.1f}", f"{p50 / base:.4f}x", f"{recall:.3f}")
    Console(width=max(Console().width, 150)).print(out)


if __name__ == "__main__":
    main()
