import numpy as np
import pytest

from pipeline.query import open_snapshot
from pipeline.query import vectors as vectors_mod
from pipeline.query.sql import connect
from pipeline.query.vectors import load_vectors
from pipeline.tables import Output
from query_helpers import DIM, MODEL, archive_tasks, write_archive


def _load(root, cache):
    snapshot = open_snapshot(root)
    with connect(snapshot) as con:
        return load_vectors(con, snapshot, MODEL, DIM, str(cache))


def test_vectors_are_cached_per_snapshot(tmp_path, monkeypatch):
    out, cache = write_archive(Output(str(tmp_path / "t")), archive_tasks()[:1]), tmp_path / "cache"
    first = _load(out.uri, cache)
    assert first.matrix.shape == (3, DIM) and np.allclose(np.linalg.norm(first.matrix, axis=1), 1.0)
    assert sorted(first.keys.column("timestamp_s").to_pylist()) == [0.0, 4.0, 8.0]
    # Unchanged output: read back, not rebuilt.
    monkeypatch.setattr(vectors_mod, "_build", lambda *a: pytest.fail("rebuilt an unchanged snapshot"))
    assert np.array_equal(_load(out.uri, cache).matrix, first.matrix)
    monkeypatch.undo()
    # A new shard is a new snapshot: rebuilt with every keyframe, and the old entry is gone.
    write_archive(out, archive_tasks())
    assert _load(out.uri, cache).matrix.shape == (5, DIM)
    assert len(list((cache / "vectors").iterdir())) == 1


def test_top_is_exact_and_repeatable(tmp_path):
    out = write_archive(Output(str(tmp_path / "t")))
    vectors = _load(out.uri, tmp_path / "cache")
    q = vectors.matrix[3]
    top = vectors.top(q, 10)
    assert len(top) == 5 and top[0][2] == pytest.approx(1.0, abs=1e-6)
    scores = [t[2] for t in top]
    assert scores == sorted(scores, reverse=True) and top == vectors.top(q, 10)
