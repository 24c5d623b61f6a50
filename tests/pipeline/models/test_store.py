"""Model references resolve to local paths: tiny builds once, fsspec URIs copied once, the rest untouched."""
from __future__ import annotations

import threading
from pathlib import Path

import fsspec
import pytest

from pipeline.models import store, tiny
from pipeline.models.tiny import BUILD


@pytest.fixture
def counted_builds(monkeypatch):
    """Calls of the real tiny builder, by role."""
    calls: list[str] = []
    real = tiny.build_tiny

    def build(role, directory):
        calls.append(role)
        return real(role, directory)

    monkeypatch.setattr(tiny, "build_tiny", build)
    return calls


def test_tiny_is_built_once_under_the_cache(tmp_path, counted_builds):
    first = store.resolve("tiny:llm", "llm", tmp_path)
    second = store.resolve("tiny:llm", "llm", str(tmp_path))
    assert first == second == str(tmp_path / "tiny" / BUILD / "llm")
    assert (Path(first) / "config.json").is_file()
    assert counted_builds == ["llm"]
    assert not [p for p in (tmp_path / "tiny").iterdir() if p.name.startswith(".")]  # no temporary left


def test_tiny_whisper_resolves_to_its_checkpoint_file(tiny_path, model_cache):
    assert tiny_path("whisper") == str(Path(model_cache) / "tiny" / BUILD / "whisper" / "tiny-whisper.pt")


def test_concurrent_resolves_build_once(tmp_path, counted_builds):
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(store.resolve("tiny:llm", "llm", tmp_path)))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1 and len(results) == 3
    assert counted_builds == ["llm"]


def test_an_interrupted_build_is_redone(tmp_path, counted_builds):
    # A folder without its pointer file: what a crash between rename and pointer leaves behind.
    (tmp_path / "tiny" / BUILD / "llm").mkdir(parents=True)
    path = store.resolve("tiny:llm", "llm", tmp_path)
    assert (Path(path) / "config.json").is_file() and counted_builds == ["llm"]


def test_local_paths_and_hub_ids_come_back_unchanged(tmp_path):
    assert store.resolve(str(tmp_path), "clip", tmp_path / "cache") == str(tmp_path)
    hub_id = "openai/clip-vit-base-patch32"
    assert store.resolve(hub_id, "clip", tmp_path, revision="abc") == hub_id
    assert store.resolve("base", "whisper", tmp_path) == "base"
    assert not (tmp_path / "cache").exists()


def test_file_uri_is_used_in_place(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"x")
    assert store.resolve(f"file://{tmp_path}/model.pt", "whisper", tmp_path / "cache") == str(tmp_path / "model.pt")


def test_remote_folder_is_copied_once_and_loads(tiny_path, tmp_path):
    from pipeline.models.clip import ClipEncoder

    fs = fsspec.filesystem("memory")
    source = Path(tiny_path("clip"))
    for f in source.iterdir():
        fs.pipe(f"/models/clip-{tmp_path.name}/{f.name}", f.read_bytes())
    uri = f"memory://models/clip-{tmp_path.name}"
    local = store.resolve(uri, "clip", tmp_path)
    assert Path(local).parent.parent == tmp_path / "remote"
    assert sorted(p.name for p in Path(local).iterdir()) == sorted(p.name for p in source.iterdir())
    fs.rm(f"/models/clip-{tmp_path.name}", recursive=True)
    assert store.resolve(uri, "clip", tmp_path) == local  # served from the cache: the source is gone
    assert ClipEncoder(local).dim > 0


def test_remote_file_keeps_its_name(tmp_path):
    fs = fsspec.filesystem("memory")
    fs.pipe(f"/models/{tmp_path.name}/whisper-small.pt", b"weights")
    local = store.resolve(f"memory://models/{tmp_path.name}/whisper-small.pt", "whisper", tmp_path)
    assert Path(local).name == "whisper-small.pt" and Path(local).read_bytes() == b"weights"
    other = store.resolve(f"memory://models/{tmp_path.name}/whisper-small.pt", "whisper", tmp_path, revision="v2")
    assert other != local  # a revision is part of the cache key
