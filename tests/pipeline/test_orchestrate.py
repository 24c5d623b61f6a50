"""list-and-shard, interval selection, storage options and validation, on tables written by the real writer.

A committed shard here holds failed rows (no models needed): validation only cares about schemas and which
inputs have a ``videos`` row.
"""
import dataclasses
import datetime as dt
import json
import os
import posixpath

import fsspec
import pyarrow as pa
import pyarrow.compute  # noqa: F401
import pytest

from pipeline.config import load_config
from pipeline.orchestrate import (
    ValidationError,
    items_in_interval,
    list_and_shard,
    merge_storage_options,
    partition_for_interval,
    storage_options_from_connection,
    storage_options_from_env,
    validate_and_publish,
)
from pipeline.orchestrate.plan import run_key
from pipeline.rows import build_tables
from pipeline.run import planned_shard
from pipeline.store import Output, commit_key, commit_shard, open_output, open_snapshot, read_commits
from pipeline.store.lease import Lease
from pipeline.task import VideoTask
from schemas.commit import CommitRecord
from schemas.plan import ShardPlan
from schemas.run import Failure, PlannedShard, RunManifest, RunPlan, RunResult, ShardOutcome, ShardResult, ShardRun

UTC = dt.timezone.utc
DAY = dt.datetime(2026, 11, 22, tzinfo=UTC)


def _media(root, names, opts=None):
    fs, base = fsspec.core.url_to_fs(root, **(opts or {}))
    for name in names:
        path = posixpath.join(base, name)
        fs.makedirs(posixpath.dirname(path), exist_ok=True)
        fs.pipe_file(path, b"not really a video")


def _shard_plan(uri, opts=None) -> ShardPlan:
    fs, path = fsspec.core.url_to_fs(uri, **(opts or {}))
    return ShardPlan.from_json(fs.cat_file(path))


def _commit(output, shard_uri, opts=None, run=None):
    """Do what run_plan does for one shard plan, minus the models: every video a failed row."""
    plan = _run_plan(posixpath.join(posixpath.dirname(shard_uri), "plan.json"), opts)
    shard = next(s for s in plan.shards if s.uri == shard_uri)
    shard_plan = _shard_plan(shard_uri, opts)
    items = planned_shard(shard_plan).items
    tasks = []
    for i in items:
        task = VideoTask(i.video_id, i.uri, i.input_fingerprint, i.size)
        task.fail("decode", "not a video")
        tasks.append(task)
    fingerprint = plan.config_fingerprint
    tables = build_tables(tasks, shard_id=shard.shard_id, config_fingerprint=fingerprint, embedding_dim=4,
                          model_names={"asr": "w", "summary": "l"}, processed_at=dt.datetime.now(UTC))
    key = run or commit_key(run_key(plan.run_id), shard_plan.plan_id)
    target = Output(output, opts, plan.partition)
    target = target.staging(key) if shard_plan.staging else target
    record = CommitRecord(run=key, shard_id=shard.shard_id, config_fingerprint=fingerprint, embedding_dim=4)
    return commit_shard(target, tables, record, planned_version=shard_plan.planned_version)


def _shards(listing, opts=None) -> list[str]:
    """The shard plans' URIs of a listing."""
    return [s.uri for s in _run_plan(listing["plan"], opts).shards]


def _videos(out, opts=None):
    return open_snapshot(out, opts).read("videos")


def test_storage_options_from_env_and_connection():
    assert storage_options_from_env({}) == {}
    env = {"AWS_ENDPOINT_URL": "http://a:9000", "AWS_ENDPOINT_URL_S3": "http://s3:9000", "AWS_REGION": "eu-west-1",
           "AWS_ACCESS_KEY_ID": "ak"}
    expected = {"client_kwargs": {"endpoint_url": "http://s3:9000", "region_name": "eu-west-1"}}
    assert storage_options_from_env(env) == expected
    env["AWS_SECRET_ACCESS_KEY"] = "sk"
    assert storage_options_from_env(env) == {**expected, "key": "ak", "secret": "sk"}
    conn = storage_options_from_connection("ak", "sk", {"service_config": {"s3": {"endpoint_url": "http://minio:9000"}},
                                                        "aws_session_token": "tok"})
    assert conn == {"key": "ak", "secret": "sk", "token": "tok", "client_kwargs": {"endpoint_url": "http://minio:9000"}}
    merged = merge_storage_options(storage_options_from_env(env), conn, {"client_kwargs": {"region_name": "us-east-1"}})
    assert merged["client_kwargs"] == {"endpoint_url": "http://minio:9000", "region_name": "us-east-1"}
    assert merged["key"] == "ak"


def test_partition_for_interval():
    assert partition_for_interval(DAY, DAY + dt.timedelta(days=1)) == "dt=2026-11-22"
    assert partition_for_interval("2026-11-16T00:00:00+00:00", "2026-11-23T00:00:00Z") == "dt=2026-11-16"
    assert partition_for_interval(DAY + dt.timedelta(hours=6), DAY + dt.timedelta(hours=7)) == "dt=2026-11-22T060000"
    import pendulum  # what Airflow passes as data_interval_start/end (installed with Airflow)

    assert partition_for_interval(pendulum.datetime(2026, 11, 22), pendulum.datetime(2026, 11, 23)) == "dt=2026-11-22"
    with pytest.raises(ValueError, match="empty data interval"):
        partition_for_interval(DAY, DAY)


def test_interval_by_modification_time(tmp_path):
    _media(str(tmp_path), ["old.mp4", "new.mp4", "late.mp4"])
    for name, when in (("old.mp4", DAY - dt.timedelta(hours=1)), ("new.mp4", DAY + dt.timedelta(hours=3)),
                       ("late.mp4", DAY + dt.timedelta(days=1))):
        os.utime(tmp_path / name, (when.timestamp(), when.timestamp()))
    picked = items_in_interval(str(tmp_path), DAY, DAY + dt.timedelta(days=1))
    assert [os.path.basename(i.uri) for i in picked] == ["new.mp4"]


def test_interval_by_day_prefix_on_s3(s3):
    bucket, opts = s3
    inbox = f"s3://{bucket}/inbox"
    names = ["dt=2026-11-21/a.mp4", "dt=2026-11-22/b.mp4", "dt=2026-11-22/sub/c.mkv", "dt=2026-11-23/d.mp4"]
    _media(inbox, names, opts)
    picked = items_in_interval(f"{inbox}/", DAY, DAY + dt.timedelta(days=1), opts)
    assert [i.uri for i in picked] == [f"{inbox}/dt=2026-11-22/b.mp4", f"{inbox}/dt=2026-11-22/sub/c.mkv"]
    # Every object was written just now, so by modification time all of them belong to today.
    now = dt.datetime.now(UTC)
    hour = dt.timedelta(hours=1)
    assert len(items_in_interval(f"{inbox}/", now - hour, now + hour, opts, "mtime")) == 4


def test_list_shard_validate_and_rerun_on_s3(s3):
    bucket, opts = s3
    _media(f"s3://{bucket}/in", [f"v{n}.mp4" for n in range(5)], opts)
    out = f"s3://{bucket}/tables"
    first = list_and_shard(f"s3://{bucket}/in/", out, "archive__manual__2026-11-23T10:00:00+00:00",
                           shard_size=2, storage_options=opts)
    assert (first["media"], first["pending"], first["skipped"], first["shards"]) == (5, 5, 0, 3)
    plan_dir = f"s3://{bucket}/tables/_plans/archive__manual__2026-11-23T10_00_00_00_00"
    shards = _shards(first, opts)
    assert shards[0] == f"{plan_dir}/shard-00000.json"
    assert [len(_shard_plan(s, opts).items) for s in shards] == [2, 2, 1]
    # The plan carries the configuration by value, with the endpoint but without the credentials.
    planned = _run_plan(first["plan"], opts).config
    assert planned["storage_options"]["client_kwargs"]["endpoint_url"] == opts["client_kwargs"]["endpoint_url"]
    assert "testing" not in json.dumps(planned) and planned["shard_size"] == 2 and "cache_dir" not in planned
    with pytest.raises(ValidationError, match="5 problem"):
        validate_and_publish(first["plan"], opts)
    for shard in shards:
        _commit(out, shard, opts)
    _commit(out, shards[0], opts)  # a retried shard rewrites itself
    manifest = _run_manifest(validate_and_publish(first["plan"], opts), opts)
    assert manifest.inputs == 5 and manifest.videos == {"ok": 0, "failed": 5} and manifest.processed == 5
    assert manifest.rows["videos"] == 5 and len(manifest.committed_shards) == 3
    assert [s.shard_id for s in manifest.shards] == [s.shard_id for s in _run_plan(first["plan"], opts).shards]

    again = list_and_shard(f"s3://{bucket}/in/", out, "second", shard_size=2, storage_options=opts)
    assert (again["pending"], again["skipped"], again["shards"]) == (0, 5, 0)
    assert _run_manifest(validate_and_publish(again["plan"], opts), opts).rows["videos"] == 5


def test_forced_rerun_with_another_shard_size_keeps_shard_ids(tmp_path):
    _media(str(tmp_path / "in"), [f"v{n}.mp4" for n in range(4)])
    out = str(tmp_path / "out")
    first = list_and_shard(str(tmp_path / "in"), out, "one", shard_size=2)
    for shard in _shards(first):
        _commit(out, shard)
    ids = {s.shard_id for s in _run_plan(first["plan"]).shards}
    Lease(Output(out), "one", shared=True).release()  # what run one's validate task does last
    again = list_and_shard(str(tmp_path / "in"), out, "two", shard_size=1, force=True)
    # Videos stay with the shard that holds them, so each old shard is rewritten by exactly one task.
    assert {s.shard_id for s in _run_plan(again["plan"]).shards} == ids
    for shard in _shards(again):
        _commit(out, shard)
    assert _videos(out).num_rows == 4


def test_more_shards_than_airflow_maps_are_planned_as_asked(tmp_path):
    # The whole run is one task, so no cap on mapped tasks grows the shards or refuses a redo.
    _media(str(tmp_path / "in"), [f"v{n:04d}.mp4" for n in range(1100)])
    result = list_and_shard(str(tmp_path / "in"), str(tmp_path / "out"), "big", shard_size=1)
    plan = _run_plan(result["plan"])
    assert result["shards"] == len(plan.shards) == 1100 and plan.shard_size == 1 and plan.pending == 1100
    assert len({s.shard_id for s in plan.shards}) == 1100


def test_interval_run_replaces_its_partition(tmp_path):
    _media(str(tmp_path / "in"), ["dt=2026-11-22/a.mp4", "dt=2026-11-22/b.mp4", "dt=2026-11-23/c.mp4"])
    out = str(tmp_path / "out")
    interval = (DAY, DAY + dt.timedelta(days=1))
    first = list_and_shard(str(tmp_path / "in"), out, "day1", interval=interval, replace_partition=True)
    assert first["partition"] == "dt=2026-11-22" and first["media"] == 2
    for shard in _shards(first):
        _commit(out, shard)
    assert Output(out).table("videos") is None  # staged, not published: readers see nothing new yet
    validate_and_publish(first["plan"])
    published = _videos(out)
    assert published.num_rows == 2 and set(published.column("dt").to_pylist()) == {"2026-11-22"}
    again = list_and_shard(str(tmp_path / "in"), out, "day1-again", interval=interval, replace_partition=True)
    assert (again["pending"], again["skipped"]) == (2, 0)
    for shard in _shards(again):
        _commit(out, shard)
    # Until the rerun is published, readers see the partition as the first run left it, whole.
    assert _videos(out).sort_by("video_id").equals(published.sort_by("video_id"))
    manifest = _run_manifest(validate_and_publish(again["plan"]))
    assert manifest.partition == "dt=2026-11-22" and manifest.rows["videos"] == 2
    replaced = _videos(out)
    assert replaced.num_rows == 2 and replaced["processed_at"] != published["processed_at"]
    assert [c.kind for c in read_commits(Output(out))].count("publish") == 2
    assert not (tmp_path / "out" / "_staging").exists() or not any((tmp_path / "out" / "_staging").iterdir())
    # A retried validate task after its publish validates the result and publishes nothing twice.
    validate_and_publish(again["plan"])
    assert [c.kind for c in read_commits(Output(out))].count("publish") == 2


def test_a_video_in_two_shards_is_committed_once_and_outside_duplicates_fail_validation(tmp_path):
    from deltalake import write_deltalake

    _media(str(tmp_path / "in"), ["a.mp4", "b.mp4"])
    out = str(tmp_path / "out")
    result = list_and_shard(str(tmp_path / "in"), out, "dup", shard_size=1)
    for shard in _shards(result):
        _commit(out, shard)
    # The same video planned under a second shard id (two runs that listed differently): the later commit
    # leaves it to the shard that holds it.
    plan = _run_plan(result["plan"])
    first = dataclasses.replace(plan.shards[0], shard_id="00000000000000ff")
    fs, path = fsspec.core.url_to_fs(result["plan"])
    fs.pipe_file(path, dataclasses.replace(plan, shards=(first, *plan.shards[1:])).to_json().encode())
    assert _commit(out, first.uri, run="another-run") is None
    twice = _shard_plan(first.uri).items[0].video_id
    assert _videos(out).column("video_id").to_pylist().count(twice) == 1
    validate_and_publish(result["plan"])
    # A row appended by some other writer, outside reelscope: validation names it.
    table = Output(out).table("videos")
    row = table.to_pyarrow_dataset().to_table().filter(pa.compute.equal(pa.compute.field("video_id"), twice))
    write_deltalake(Output(out).table_uri("videos"), row, mode="append")
    with pytest.raises(ValidationError, match=f"video {twice} has 2 videos rows"):
        validate_and_publish(result["plan"])


def test_config_file_storage_options_win(tmp_path, monkeypatch):
    from pipeline.orchestrate import build_config

    cfg = tmp_path / "run.yaml"
    cfg.write_text("storage_options: {client_kwargs: {endpoint_url: 'http://minio:9000'}}\n")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://env:9000")
    for name in ("REGION", "DEFAULT_REGION", "ENDPOINT_URL_S3", "ACCESS_KEY_ID", "SECRET_ACCESS_KEY"):
        monkeypatch.delenv(f"AWS_{name}", raising=False)
    config = build_config("in", "out", {"key": "k"}, config_file=str(cfg))
    assert config.storage_options == {"client_kwargs": {"endpoint_url": "http://minio:9000"}, "key": "k"}
    assert config == load_config("in", "out", config_file=str(cfg), storage_options=config.storage_options)


def test_run_plan_executes_its_plan_as_written_without_its_config_file(tmp_path, ray_session, model_cache):
    from pipeline.config import ConfigError, config_from_dict
    from pipeline.orchestrate import result_path, run_plan
    from pipeline.run import run_planned

    _media(str(tmp_path / "in"), ["a.mp4", "b.mp4", "c.mp4"])
    cfg = tmp_path / "run.yaml"
    cfg.write_text("keyframes: {max_keyframes: 3}\nlimits: {max_duration_s: 60}\nshard_size: 2\n")
    out = str(tmp_path / "out")
    listing = list_and_shard(str(tmp_path / "in"), out, "as-planned", config_file=str(cfg), retry_failed=True)
    plan = _run_plan(listing["plan"])
    planned = [_shard_plan(u) for u in _shards(listing)]
    assert [len(p.items) for p in planned] == [2, 1]
    assert config_from_dict(plan.config).fingerprint() == plan.config_fingerprint
    # The run is what was listed: the config file gone since changes nothing, nor does the input. A file gone
    # is still its row (failed, saying so); a new one waits for the next plan.
    cfg.unlink()
    (tmp_path / "in" / "b.mp4").unlink()
    _media(str(tmp_path / "in"), ["d.mp4"])
    result = run_plan(listing["plan"], cache_dir=model_cache)
    assert {k: result["totals"][k] for k in ("discovered", "failed", "skipped", "shards")} == {
        "discovered": 3, "failed": 3, "skipped": 0, "shards": 2}
    assert result["shards"] == [{"shard_id": p.shard_id, "videos": len(p.items), "ok": 0, "failed": len(p.items),
                                 "committed_before": False} for p in planned]
    assert sorted(r.shard_id for r in read_commits(Output(out))) == sorted(p.shard_id for p in planned)
    rows = _videos(out).to_pylist()
    items = sorted((i for p in planned for i in p.items), key=lambda i: i.uri)
    assert [(r["uri"], r["input_fingerprint"]) for r in sorted(rows, key=lambda r: r["uri"])] == [
        (i.uri, i.input_fingerprint) for i in items]
    shard_result = ShardResult.from_json(open(result_path(_shards(listing)[0].removeprefix("file://"))).read())
    assert shard_result.failed == 2 and len(shard_result.failures) == 2

    # A retry of the run (the next try of its task or job): the shards it committed are skipped.
    again = run_plan(listing["plan"], cache_dir=model_cache)
    assert [s["committed_before"] for s in again["shards"]] == [True, True]
    assert [s["failed"] for s in again["shards"]] == [2, 1] and again["totals"]["shards"] == 0
    assert again["totals"]["skipped"] == 3 and _videos(out).num_rows == 3
    # Planned for the tiny profile: a worker configured otherwise refuses rather than writes other rows.
    with pytest.raises(ConfigError, match=f"shard {planned[0].shard_id} was planned for configuration"):
        run_planned(load_config(str(tmp_path / "in"), out, "cpu"), planned[:1])
    assert plan.retry_failed is True and plan.config["keyframes"]["max_keyframes"] == 3


def test_the_configuration_travels_by_value(tmp_path):
    from pipeline.config import ConfigError, config_from_dict, config_to_dict

    cfg = tmp_path / "run.yaml"
    cfg.write_text("models: {summary: {ref: 'tiny:llm', max_new_tokens: 99, options: {context_tokens: 512}}}\n"
                   "limits: {stage_s: 30}\ndevice: cpu\n")
    for profile in ("tiny", "cpu", "gpu"):
        config = load_config("in", "out", profile, config_file=str(cfg), storage_options={"key": "k"})
        values = json.loads(json.dumps(config_to_dict(config)))  # as the plan's JSON holds it
        assert config_from_dict(values) == config and config_from_dict(values).fingerprint() == config.fingerprint()
    assert config_from_dict({"input": "in", "output": "out"}) == load_config("in", "out")
    with pytest.raises(ConfigError, match="unknown key"):
        config_from_dict({**values, "colour": "red"})
    with pytest.raises(ConfigError, match="must name the roles"):
        config_from_dict({**values, "models": {"asr": values["models"]["asr"]}})


def _run_plan(uri, opts=None) -> RunPlan:
    fs, path = open_output(uri, opts)
    return RunPlan.from_json(fs.cat_file(path))


def _run_manifest(uri, opts=None) -> RunManifest:
    fs, path = open_output(uri, opts)
    return RunManifest.from_json(fs.cat_file(path))


def test_run_records_read_back_as_written_and_from_older_runs():
    plan = RunPlan("r", "in/", "out/", "fp", interval=("2026-11-22T00:00:00+00:00", "2026-11-23T00:00:00+00:00"),
                   shards=(PlannedShard("out/_plans/r/shard-00000.json", "ab" * 8, 2),))
    assert RunPlan.from_json(plan.to_json()) == plan and plan.pending == 2
    result = ShardResult(ok=1, failed=1, failures=(Failure("file:///b.mp4", "decode: not a video"),))
    assert ShardResult.from_json(result.to_json()) == result
    assert "failures" not in result.counts() and result.counts()["failed"] == 1
    manifest = RunManifest("r", "p", "in/", "out/", "fp", "1", "2", shards=(ShardOutcome("u", "s", 2, result),))
    assert RunManifest.from_json(manifest.to_json()) == manifest
    run = RunResult("r", "p1", {"ok": 1}, (ShardRun("s", 2, 1, 1, True),), {"videos": "file:///o/videos"},
                    {"videos": 3})
    assert RunResult.from_json(run.to_json()) == run and run.to_dict()["shards"][0]["committed_before"] is True
    # A plan written before these classes: extra keys are ignored, the shards still become records.
    old = {"run_id": "r", "input_uri": "i", "output_uri": "o", "config_fingerprint": "f", "media": 3,
           "shards": [{"uri": "u", "shard_id": "s", "videos": 3}], "some_later_key": 1}
    assert RunPlan.from_json(json.dumps(old)).shards == (PlannedShard("u", "s", 3),)


def test_a_cleared_run_redoes_what_its_new_plan_says(tmp_path):
    from pipeline.store import shard_committed

    _media(str(tmp_path / "in"), ["a.mp4", "b.mp4"])
    out, run = str(tmp_path / "out"), "reelscope_archive__manual__2026-11-23T10:00:00+00:00"
    (first,) = _shards(list_and_shard(str(tmp_path / "in"), out, run, shard_size=2))
    _commit(out, first)
    old = _shard_plan(first)
    (tmp_path / "in" / "a.mp4").write_bytes(b"another video now")
    # The same DAG run cleared and run again: same run id, a new listing that redoes a.mp4 in its shard.
    (again,) = _shards(list_and_shard(str(tmp_path / "in"), out, run, shard_size=2))
    new = _shard_plan(again)
    assert new.shard_id == old.shard_id and [i.uri.rsplit("/", 1)[-1] for i in new.items] == ["a.mp4"]
    assert new.plan_id != old.plan_id
    key = run_key(run)
    assert shard_committed(Output(out), commit_key(key, old.plan_id), old.shard_id)
    assert not shard_committed(Output(out), commit_key(key, new.plan_id), new.shard_id)  # so it runs again
