import shutil

import numpy as np
import pytest

from pipeline.query import open_snapshot
from pipeline.query import vectors as vectors_mod
from pipeline.query.sql import connect
from pipeline.query.vectors import load_vectors
from pipeline.store import Output
from query_helpers import DIM, MODEL, archive_tasks, write_archive


def _load(root, cache, snapshot=None):
    snapshot = snapshot or open_snapshot(root)
    with connect(snapshot) as con:
        return load_vectors(con, snapshot, MODEL, DIM, str(cache))


def _entries(cache) -> list[str]:
    return sorted(p.name for p in (cache / "vectors").iterdir())


def test_vectors_are_cached_per_snapshot(tmp_path, monkeypatch):
    out, cache = write_archive(Output(str(tmp_path / "t")), archive_tasks()[:1]), tmp_path / "cache"
    first = _load(out.uri, cache)
    assert first.matrix.shape == (3, DIM) and np.allclose(np.linalg.norm(first.matrix, axis=1), 1.0)
    assert sorted(first.keys.column("timestamp_s").to_pylist()) == [0.0, 4.0, 8.0]
    (entry,) = _entries(cache)
    # Unchanged output (the same table versions): read back, not rebuilt, also through another spelling.
    monkeypatch.setattr(vectors_mod, "_build", lambda *a: pytest.fail("rebuilt an unchanged snapshot"))
    assert np.array_equal(_load(out.uri, cache).matrix, first.matrix)
    assert np.array_equal(_load(f"file://{out.uri}/", cache).matrix, first.matrix)
    monkeypatch.undo()
    # A new shard's commit is a new snapshot: rebuilt with every keyframe, and the old entry is gone.
    write_archive(out, archive_tasks())
    assert _load(out.uri, cache).matrix.shape == (5, DIM)
    assert len(_entries(cache)) == 1 and _entries(cache) != [entry]


def test_a_snapshot_pinned_before_a_commit_keeps_its_own_vectors(tmp_path):
    out, cache = write_archive(Output(str(tmp_path / "t")), archive_tasks()[:1]), tmp_path / "cache"
    before = open_snapshot(out.uri)
    write_archive(out, archive_tasks())
    assert _load(out.uri, cache).matrix.shape == (5, DIM)
    assert _load(out.uri, cache, before).matrix.shape == (3, DIM)  # its pinned versions, not the newest


def test_an_output_written_again_from_scratch_is_not_read_from_the_cache(tmp_path):
    """Table versions restart at 0 when an output is deleted and written again; the Delta table ids do not."""
    out, cache = write_archive(Output(str(tmp_path / "t"))), tmp_path / "cache"
    assert _load(out.uri, cache).matrix.shape == (5, DIM)
    shutil.rmtree(tmp_path / "t")
    (_, broken), (kitchen,) = archive_tasks()
    write_archive(Output(str(tmp_path / "t")), [[kitchen], [broken]])  # two shards again: the same versions
    assert open_snapshot(out.uri).versions["keyframes"] == 2
    again = _load(out.uri, cache)
    assert again.matrix.shape == (2, DIM) and set(again.keys.column("video_id").to_pylist()) == {kitchen.video_id}
    assert len(_entries(cache)) == 1


def test_top_is_exact_and_repeatable(tmp_path):
    out = write_archive(Output(str(tmp_path / "t")))
    vectors = _load(out.uri, tmp_path / "cache")
    q = vectors.matrix[3]
    top = vectors.top(q, 10)
    assert len(top) == 5 and top[0][2] == pytest.approx(1.0, abs=1e-6)
    scores = [t[2] for t in top]
    assert scores == sorted(scores, reverse=True) and top == vectors.top(q, 10)
