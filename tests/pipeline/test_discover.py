import json
import os
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.discover import InputError, discover, plan_shards, shard_id_for, video_id_for
from schemas.manifest import ShardManifest


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "a").mkdir()
    for name in ("a/one.mp4", "a/two.MOV", "three.mkv", "notes.txt", "cover.jpg"):
        (tmp_path / name).write_bytes(b"x" * 10)
    return tmp_path


def test_folder_lists_videos_recursively_and_ignores_others(tree):
    items = discover(str(tree))
    names = sorted(os.path.basename(i.uri) for i in items)
    assert names == ["one.mp4", "three.mkv", "two.MOV"]
    assert all(i.uri.startswith("file://") and i.size == 10 for i in items)


def test_ids_are_stable_and_fingerprints_follow_content(tree):
    first = {i.uri: i for i in discover(str(tree))}
    again = {i.uri: i for i in discover(str(tree))}
    assert first == again
    target = tree / "three.mkv"
    target.write_bytes(b"y" * 20)
    os.utime(target, (time.time() + 5, time.time() + 5))
    changed = {i.uri: i for i in discover(str(tree))}
    uri = next(u for u in changed if u.endswith("three.mkv"))
    assert changed[uri].video_id == first[uri].video_id == video_id_for(uri)
    assert changed[uri].input_fingerprint != first[uri].input_fingerprint


def test_glob_and_single_file(tree):
    assert [os.path.basename(i.uri) for i in discover(str(tree / "a" / "*.mp4"))] == ["one.mp4"]
    assert len(discover(str(tree / "three.mkv"))) == 1


def test_manifests_csv_txt_parquet(tree, tmp_path):
    paths = [str(tree / "a/one.mp4"), str(tree / "three.mkv")]
    (tmp_path / "m.csv").write_text("uri,label\n" + "\n".join(f"{p},x" for p in paths) + "\n")
    (tmp_path / "m.txt").write_text("# inputs\n" + "\n".join(paths) + "\n")
    pq.write_table(pa.table({"uri": paths}), tmp_path / "m.parquet")
    for name in ("m.csv", "m.txt", "m.parquet"):
        assert sorted(os.path.basename(i.uri) for i in discover(str(tmp_path / name))) == ["one.mp4", "three.mkv"]


def test_manifest_entry_that_is_missing_is_kept(tmp_path):
    (tmp_path / "m.txt").write_text(str(tmp_path / "gone.mp4") + "\n")
    (item,) = discover(str(tmp_path / "m.txt"))
    assert item.input_fingerprint == "missing" and item.uri.endswith("gone.mp4")


def test_missing_input_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="input not found"):
        discover(str(tmp_path / "nope"))


def test_s3_prefix(s3):
    import s3fs

    bucket, opts = s3
    fs = s3fs.S3FileSystem(**opts)
    fs.pipe(f"{bucket}/media/x.mp4", b"abc")
    fs.pipe(f"{bucket}/media/deep/y.webm", b"abcd")
    fs.pipe(f"{bucket}/media/readme.md", b"hi")
    items = discover(f"s3://{bucket}/media", opts)
    assert [i.uri for i in items] == [f"s3://{bucket}/media/deep/y.webm", f"s3://{bucket}/media/x.mp4"]
    assert [i.size for i in items] == [4, 3]
    assert all(i.modified is not None for i in items)


def _manifest(shard_id, items, config="c1", status="ok"):
    """A committed manifest, read from the JSON a writer leaves."""
    return ShardManifest.from_json(json.dumps({
        "shard_id": shard_id,
        "config_fingerprint": config,
        "videos": [{"video_id": i.video_id, "input_fingerprint": i.input_fingerprint, "status": status} for i in items],
    }))


def test_plan_skips_done_and_regroups_changed(tree):
    items = discover(str(tree))
    shards, skipped = plan_shards(items, [], "c1", shard_size=2)
    assert skipped == 0 and [len(s.items) for s in shards] == [2, 1]
    assert shards[0].shard_id == shard_id_for(i.video_id for i in shards[0].items)
    committed = [_manifest(s.shard_id, s.items) for s in shards]
    again, skipped = plan_shards(items, committed, "c1", shard_size=2)
    assert again == [] and skipped == 3
    # A changed config redoes everything, in the same shards (same files are replaced, nothing duplicated).
    redo, skipped = plan_shards(items, committed, "c2", shard_size=2)
    assert skipped == 0 and [s.shard_id for s in redo] == sorted(s.shard_id for s in shards)
    # A changed file is redone alone in its shard (the writer keeps the shard's other rows); force redoes all.
    changed = [i if i.video_id != shards[0].items[0].video_id else type(i)(i.uri, i.video_id, 99, i.modified, "new") for i in items]
    redo, skipped = plan_shards(changed, committed, "c1", shard_size=2)
    assert [s.shard_id for s in redo] == [shards[0].shard_id] and skipped == len(items) - 1
    assert [i.video_id for i in redo[0].items] == [shards[0].items[0].video_id]
    forced, skipped = plan_shards(items, committed, "c1", shard_size=2, force=True)
    assert sorted(s.shard_id for s in forced) == sorted(s.shard_id for s in shards) and skipped == 0


def test_retry_failed_redoes_the_shards_holding_failures(tree):
    items = discover(str(tree))
    shards, _ = plan_shards(items, [], "c1", shard_size=2)
    committed = [_manifest(shards[0].shard_id, shards[0].items),
                 _manifest(shards[1].shard_id, shards[1].items, status="failed")]
    failed_id = shards[1].items[0].video_id
    assert plan_shards(items, committed, "c1", shard_size=2) == ([], 3)
    redo, skipped = plan_shards(items, committed, "c1", shard_size=2, retry_failed=True)
    assert [s.shard_id for s in redo] == [shards[1].shard_id] and skipped == 2
    assert [i.video_id for i in redo[0].items] == [failed_id]
