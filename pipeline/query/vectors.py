"""Keyframe embeddings as one flat float32 matrix on local disk, cached per snapshot and model.

At archive scale decoding the Parquet list column costs seconds on every search, while the dot products cost
milliseconds (see benchmarks/search_bench.py). The cache pays the decoding once per snapshot and stays exact
brute force. An entry is named by the versions of ``videos`` and ``keyframes`` the snapshot pins (and the
tables' Delta ids, which a table deleted and written again does not keep): any commit to either, a new,
rewritten or retracted shard, compaction, changes the entry.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.query import Snapshot

log = logging.getLogger(__name__)

_KEYS = ("video_id", "frame_index", "timestamp_s")
_WHERE = "FROM keyframes WHERE embedding_model = $m AND embedding IS NOT NULL"


@dataclass(frozen=True)
class KeyframeVectors:
    keys: pa.Table  # video_id, frame_index, timestamp_s; row i is the keyframe of matrix row i
    matrix: np.ndarray  # [n, dim] float32, rows L2-normalised; memory-mapped

    def top(self, vector: np.ndarray, n: int) -> list[tuple[str, float, float, int]]:
        """The ``n`` nearest keyframes by cosine: (video_id, timestamp_s, score, frame_index), best first."""
        if not len(self.matrix):
            return []
        q = np.asarray(vector, np.float32) / max(float(np.linalg.norm(vector)), 1e-12)
        scores = self.matrix @ q
        n = min(n, len(scores))
        best = np.argpartition(-scores, n - 1)[:n]
        best = best[np.lexsort((best, -scores[best]))]  # ties in row order, so results are repeatable
        rows = self.keys.take(pa.array(best)).to_pylist()
        return [(r["video_id"], r["timestamp_s"], float(scores[i]), r["frame_index"]) for r, i in zip(rows, best)]


def _entry(snapshot: Snapshot, model: str) -> tuple[str, str]:
    """(prefix shared by every snapshot of this output and model, this snapshot's own name)."""
    where = snapshot.output.fs.unstrip_protocol(snapshot.output.root)  # one entry whatever the spelling of the URI
    prefix = hashlib.sha256(json.dumps([where, model]).encode()).hexdigest()[:16]
    state = []
    for name in ("videos", "keyframes"):  # what the vectors' rows depend on (children of videos present)
        table = snapshot.table(name)
        state.append([name, snapshot.versions.get(name, -1), table.metadata().id if table is not None else None])
    digest = hashlib.sha256(json.dumps(state).encode()).hexdigest()[:16]
    return prefix, f"{prefix}-{digest}"


def load_vectors(con: duckdb.DuckDBPyConnection, snapshot: Snapshot, model: str, dim: int, cache_dir: str) -> KeyframeVectors:
    """The embeddings of ``model``'s keyframes, from the cache or built into it with one scan."""
    root = Path(cache_dir) / "vectors"
    prefix, name = _entry(snapshot, model)
    path = root / name
    if not path.exists():
        ((n,),) = con.execute(f"SELECT count(*) {_WHERE}", {"m": model}).fetchall()
        if not n:  # nothing to cache (and numpy cannot map an empty matrix)
            empty = pa.table({"video_id": pa.array([], pa.string()), "frame_index": pa.array([], pa.int64()),
                              "timestamp_s": pa.array([], pa.float64())})
            return KeyframeVectors(empty, np.zeros((0, dim), np.float32))
        _build(con, model, n, dim, root, path)
        for stale in root.glob(f"{prefix}-*"):  # older snapshots of the same output are never read again
            if stale != path:
                shutil.rmtree(stale, ignore_errors=True)
    return KeyframeVectors(pq.read_table(path / "keys.parquet"), np.load(path / "vectors.npy", mmap_mode="r"))


def _build(con, model: str, n: int, dim: int, root: Path, path: Path) -> None:
    log.info("caching %d keyframe embeddings of %s under %s", n, model, path)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".building-"))
    try:
        matrix = np.lib.format.open_memmap(tmp / "vectors.npy", mode="w+", dtype=np.float32, shape=(n, dim))
        keys, row = [], 0
        # Streamed in batches: the matrix never has to fit in memory twice.
        query = f"SELECT {', '.join(_KEYS)}, embedding::FLOAT[{dim}] AS e {_WHERE}"
        for batch in con.sql(query, params={"m": model}).to_arrow_reader(65536):
            flat = batch.column("e").flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
            norms = np.linalg.norm(flat, axis=1, keepdims=True)
            matrix[row:row + len(flat)] = flat / np.maximum(norms, 1e-12)
            keys.append(pa.Table.from_batches([batch]).select(list(_KEYS)))
            row += len(flat)
        matrix.flush()
        del matrix
        pq.write_table(pa.concat_tables(keys), tmp / "keys.parquet")
        os.replace(tmp, path)
    except OSError:
        if not path.exists():  # another search that built the same entry at the same time is as good
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
