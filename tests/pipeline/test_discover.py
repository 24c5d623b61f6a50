import json
import logging
import os
import shutil
import tempfile
import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.discover import InputError, discover, plan_shards, shard_id_for, video_id_for
from pipeline.store import CommittedVideo


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


def _committed(*shards, config="c1", status=None):
    """What the videos table holds after committing ``shards`` (``status``: shard id -> status, else ok)."""
    return {i.video_id: CommittedVideo(i.input_fingerprint, config, (status or {}).get(s.shard_id, "ok"), s.shard_id)
            for s in shards for i in s.items}


def test_plan_skips_done_and_regroups_changed(tree):
    items = discover(str(tree))
    shards, skipped = plan_shards(items, {}, "c1", shard_size=2)
    assert skipped == 0 and [len(s.items) for s in shards] == [2, 1]
    assert shards[0].shard_id == shard_id_for(i.video_id for i in shards[0].items)
    committed = _committed(*shards)
    again, skipped = plan_shards(items, committed, "c1", shard_size=2)
    assert again == [] and skipped == 3
    # A changed config redoes everything, in the same shards (same files are replaced, nothing duplicated).
    redo, skipped = plan_shards(items, committed, "c2", shard_size=2)
    assert skipped == 0 and [s.shard_id for s in redo] == sorted(s.shard_id for s in shards)
    # A changed file is redone alone in its shard (its commit replaces just that video's rows); force redoes all.
    changed = [i if i.video_id != shards[0].items[0].video_id else type(i)(i.uri, i.video_id, 99, i.modified, "new") for i in items]
    redo, skipped = plan_shards(changed, committed, "c1", shard_size=2)
    assert [s.shard_id for s in redo] == [shards[0].shard_id] and skipped == len(items) - 1
    assert [i.video_id for i in redo[0].items] == [shards[0].items[0].video_id]
    forced, skipped = plan_shards(items, committed, "c1", shard_size=2, force=True)
    assert sorted(s.shard_id for s in forced) == sorted(s.shard_id for s in shards) and skipped == 0


def test_retry_failed_redoes_the_shards_holding_failures(tree):
    items = discover(str(tree))
    shards, _ = plan_shards(items, {}, "c1", shard_size=2)
    committed = _committed(*shards, status={shards[1].shard_id: "failed"})
    failed_id = shards[1].items[0].video_id
    assert plan_shards(items, committed, "c1", shard_size=2) == ([], 3)
    redo, skipped = plan_shards(items, committed, "c1", shard_size=2, retry_failed=True)
    assert [s.shard_id for s in redo] == [shards[1].shard_id] and skipped == 2
    assert [i.video_id for i in redo[0].items] == [failed_id]


# Special files: discovery checks what an entry is before reading it. A FIFO, a device, a directory, a symlink
# loop or a dangling symlink is never opened; it becomes a failed item whose fingerprint names the problem,
# with one warning line.


def _unblock(fifo):
    """Let a reader stuck opening ``fifo`` go on (to EOF): what a regression leaves behind, not a hang."""
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass  # no reader waiting


def _discover_promptly(uri, fifos=()):
    """``discover(uri)`` by basename; fails the test (rather than hanging it) when it takes over 10 s."""
    result = {}

    def target():
        try:
            result["items"] = discover(uri)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            result["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(10)
    if thread.is_alive():
        for fifo in fifos:
            _unblock(fifo)
        pytest.fail(f"discover({uri}) did not return within 10 s")
    if "error" in result:
        raise result["error"]
    return {os.path.basename(i.uri): i for i in result["items"]}


def _warnings(caplog):
    records = [r for r in caplog.records if r.name == "pipeline.discover" and r.levelno == logging.WARNING]
    return sorted(r.getMessage() for r in records)


def _readable(path):
    try:
        with open(path, "rb"):
            return True
    except PermissionError:
        return False


@pytest.fixture
def specials(tmp_path):
    """A folder of media with every kind of special entry named like a video, next to two usable files."""
    media = tmp_path / "media"
    media.mkdir()
    (media / "ok.mp4").write_bytes(b"video bytes")
    os.mkfifo(media / "x.mp4")
    os.symlink("/dev/zero", media / "zero.mp4")
    os.symlink("b.mp4", media / "a.mp4")  # a.mp4 -> b.mp4 -> a.mp4
    os.symlink("a.mp4", media / "b.mp4")
    os.symlink("nowhere.mp4", media / "dangling.mp4")
    os.symlink("ok.mp4", media / "link.mp4")  # a symlink to a regular file is read through
    (media / "d.mp4").mkdir()  # a directory named like a video: walked, never opened
    (media / "d.mp4" / "inner.mkv").write_bytes(b"inner")
    os.symlink("..", media / "d.mp4" / "up.mp4")  # a symlink to a directory, named like a video
    locked = media / "locked.mp4"
    locked.write_bytes(b"locked bytes")
    locked.chmod(0)
    yield media
    locked.chmod(0o644)


FAILED = {
    "x.mp4": ("not-regular:fifo", "not a regular file (FIFO)"),
    "zero.mp4": ("not-regular:char-device", "not a regular file (character device)"),
    "a.mp4": ("symlink-loop", "a symlink loop (too many levels of symbolic links)"),
    "b.mp4": ("symlink-loop", "a symlink loop (too many levels of symbolic links)"),
    "dangling.mp4": ("dangling-symlink", "a dangling symlink (its target does not exist)"),
}


def _check_specials(media, items, caplog, failed):
    expected = {name: fp for name, (fp, _) in failed.items()}
    assert {n: i.input_fingerprint for n, i in items.items() if n in expected} == expected
    assert all(items[n].size is None and items[n].modified is None for n in expected)
    # The usable files get a content fingerprint; a symlink to one gets the same.
    assert items["ok.mp4"].size == 11 and len(items["ok.mp4"].input_fingerprint) == 16
    assert items["link.mp4"].input_fingerprint == items["ok.mp4"].input_fingerprint
    if _readable(media / "locked.mp4"):  # root reads a mode-000 file: it is an ordinary input then
        assert items["locked.mp4"].size == 12 and len(items["locked.mp4"].input_fingerprint) == 16
    else:
        failed = {**failed, "locked.mp4": ("unreadable", "cannot be read (permission denied)")}
        assert items["locked.mp4"].input_fingerprint == "unreadable"
    assert _warnings(caplog) == sorted(
        f"skipping {_find(media, name)}: {what}; it becomes a failed row" for name, (_, what) in failed.items()
    )


def _find(media, name):
    (path,) = [p for p in (media / name, media / "d.mp4" / name) if os.path.lexists(p)]
    return path


def test_special_files_in_a_folder_become_failed_items_and_are_never_read(specials, caplog):
    caplog.set_level(logging.WARNING, logger="pipeline.discover")
    items = _discover_promptly(str(specials), fifos=[specials / "x.mp4"])
    failed = {**FAILED, "up.mp4": ("not-regular:directory", "not a regular file (directory)")}
    _check_specials(specials, items, caplog, failed)
    # The directory named like a video is walked (its video listed), not itself an item.
    assert "d.mp4" not in items and items["inner.mkv"].size == 5
    assert sorted(items) == sorted({*failed, "ok.mp4", "link.mp4", "locked.mp4", "inner.mkv"})


def test_special_files_matched_by_a_glob_become_failed_items(specials, caplog):
    caplog.set_level(logging.WARNING, logger="pipeline.discover")
    items = _discover_promptly(str(specials / "*.mp4"), fifos=[specials / "x.mp4"])
    _check_specials(specials, items, caplog, FAILED)
    # A directory the glob matches is left out (it holds media; it is not one).
    assert sorted(items) == sorted({*FAILED, "ok.mp4", "link.mp4", "locked.mp4"})


def test_a_special_file_named_as_the_input_is_a_failed_item(specials, caplog):
    caplog.set_level(logging.WARNING, logger="pipeline.discover")
    for name, (fingerprint, what) in FAILED.items():
        caplog.clear()
        (item,) = _discover_promptly(str(specials / name), fifos=[specials / "x.mp4"]).values()
        assert item.uri == f"file://{specials / name}" and item.input_fingerprint == fingerprint
        assert _warnings(caplog) == [f"skipping {specials / name}: {what}; it becomes a failed row"]
    # A manifest that is not a regular file is not read either: one line for the user.
    os.mkfifo(specials / "list.txt")
    with pytest.raises(InputError, match=r"cannot read manifest .*list\.txt: not a regular file \(FIFO\)"):
        _discover_promptly(str(specials / "list.txt"), fifos=[specials / "list.txt"])


def test_manifest_naming_special_files_yields_failed_items(specials, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="pipeline.discover")
    names = ["ok.mp4", "x.mp4", "zero.mp4", "a.mp4", "dangling.mp4", "d.mp4", "gone.mp4"]
    (tmp_path / "m.txt").write_text("\n".join(["/dev/zero", *(str(specials / n) for n in names)]) + "\n")
    items = {i.uri: i for i in _discover_promptly(str(tmp_path / "m.txt"), fifos=[specials / "x.mp4"]).values()}
    fingerprints = {uri.removeprefix(f"file://{specials}/"): i.input_fingerprint for uri, i in items.items()}
    assert len(fingerprints.pop("ok.mp4")) == 16
    assert fingerprints == {
        "file:///dev/zero": "not-regular:char-device",
        "x.mp4": "not-regular:fifo",
        "zero.mp4": "not-regular:char-device",
        "a.mp4": "symlink-loop",
        "dangling.mp4": "dangling-symlink",
        "d.mp4": "not-regular:directory",
        "gone.mp4": "missing",  # as before: no warning, the decode stage words it
    }
    zero = "skipping /dev/zero: not a regular file (character device); it becomes a failed row"
    assert len(_warnings(caplog)) == 6 and zero in _warnings(caplog)  # one line each; none for "missing"


def test_failed_items_say_what_the_file_is_in_the_decode_stage(specials):
    from pipeline.stages.decode import MediaDecoder
    from pipeline.task import VideoTask

    items = _discover_promptly(str(specials), fifos=[specials / "x.mp4"])
    tasks = {n: VideoTask(i.video_id, i.uri, i.input_fingerprint, i.size) for n, i in items.items()}
    tasks = {n: t for n, t in tasks.items() if n in FAILED}
    MediaDecoder().process(list(tasks.values()))
    assert {n: t.error for n, t in tasks.items()} == {n: f"decode: {what}" for n, (_, what) in FAILED.items()}


def _as_nobody(fn):
    """Run ``fn()`` in a forked child that has dropped root for ``nobody`` (root reads any file); its
    JSON-able result and the warning lines it logged come back through a pipe."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        status = 1
        try:
            os.close(read_end)
            records = []
            handler = logging.Handler(logging.WARNING)
            handler.emit = lambda record: records.append(record.getMessage())
            logging.getLogger("pipeline.discover").addHandler(handler)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            try:
                done = {"result": fn(), "warnings": records}
            except Exception as exc:  # noqa: BLE001 - reported to the parent
                done = {"error": f"{type(exc).__name__}: {exc}"}
            with os.fdopen(write_end, "w") as out:
                json.dump(done, out)
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    deadline = time.monotonic() + 10
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("discover as nobody did not return within 10 s")
        time.sleep(0.05)
    with os.fdopen(read_end) as f:
        return json.loads(f.read() or "null")


def test_unreadable_file_is_a_failed_item_with_a_warning(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="pipeline.discover")
    # Outside pytest's root-only temporary folder, so that nobody can reach it.
    media = tempfile.mkdtemp(prefix="reelscope-unreadable-")
    try:
        os.chmod(media, 0o755)
        with open(os.path.join(media, "ok.mp4"), "wb") as f:
            f.write(b"fine")
        locked = os.path.join(media, "locked.mp4")
        with open(locked, "wb") as f:
            f.write(b"secret")
        os.chmod(locked, 0)

        def listing():
            return {os.path.basename(i.uri): i.input_fingerprint for i in discover(media)}

        if os.geteuid() == 0:  # root reads a mode-000 file: check as nobody, for whom it is unreadable
            done = _as_nobody(listing)
            assert done is not None and "error" not in done, done
            fingerprints, warnings = done["result"], done["warnings"]
        else:
            fingerprints, warnings = listing(), _warnings(caplog)
        assert fingerprints["locked.mp4"] == "unreadable" and len(fingerprints["ok.mp4"]) == 16
        assert warnings == [f"skipping {locked}: cannot be read (permission denied); it becomes a failed row"]
    finally:
        shutil.rmtree(media)


def test_hashing_reads_no_more_than_the_listed_size(tmp_path):
    # A file that grows after it was listed is hashed as listed: the read is bounded by the listed size.
    from fsspec.implementations.local import LocalFileSystem

    from pipeline.discover import _content_hash

    path = tmp_path / "growing.mp4"
    path.write_bytes(b"a" * 100)
    before = _content_hash(LocalFileSystem(), str(path), 100)
    with open(path, "ab") as f:
        f.write(b"b" * 100)
    assert _content_hash(LocalFileSystem(), str(path), 100) == before
