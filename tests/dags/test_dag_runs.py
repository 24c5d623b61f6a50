"""Both DAGs end to end with ``dag.test()``: tiny models, a real S3 endpoint on loopback, the session's Ray
in the task, or a Ray cluster of its own that runs the whole run as one Ray Job while the task is deferred.

The archive runs reach S3 through an Airflow AWS connection, the daily run through the ``AWS_*``
environment; the session's Ray workers, started before either was set, see neither, so what reaches them
travels in the run's storage options; the Ray cluster's environment has no credentials, so what reaches its
job travels in the job's runtime environment. What the runs publish is read back as Airflow asset events
(from the metadata DB) and OpenLineage events (from the provider's file transport).
"""
import datetime as dt
import json

import fsspec
import pyarrow.dataset as ds
import pytest

from airflow_env import REPO, lineage_events
from pipeline.orchestrate.plan import run_result_path
from pipeline.store import Output, open_snapshot, read_commits
from schemas.run import RunResult

TABLES = ("videos", "keyframes", "segments", "summaries")

UTC = dt.timezone.utc
pytestmark = pytest.mark.usefixtures("airflow_db", "ray_session")


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    from pipeline.media.speech import lay_out, write_talk
    from pipeline.media.synth import make_video

    folder = tmp_path_factory.mktemp("samples")
    videos = [folder / "scenes.mp4", folder / "still.mkv"]
    speech, _ = lay_out([(0.3, "Hello from the archive.")], 2.0)
    write_talk(videos[0], speech, [("red", 1.0), ("blue", 1.0)])
    make_video(videos[1], [("lime", 1.5)])
    broken = folder / "broken.mp4"
    broken.write_bytes(b"this is not a video\n" * 64)
    return videos, broken


@pytest.fixture(scope="module")
def dags():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    return bag.dags


@pytest.fixture(autouse=True)
def tiny_models(model_cache, monkeypatch):
    monkeypatch.setenv("REELSCOPE_CACHE", model_cache)


def _upload(fs, files, prefix):
    for f in files:
        fs.put_file(str(f), f"{prefix}/{f.name}")


def _states(dr):
    return sorted((ti.task_id, ti.map_index, ti.state) for ti in dr.get_task_instances())


def _asset_events(dr) -> dict[str, list]:
    """The asset events the DAG run's tasks emitted, by the table they update: (alias, extra) each."""
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session

    with create_session() as session:
        events = session.query(AssetEvent).filter_by(source_dag_id=dr.dag_id, source_run_id=dr.run_id).all()
        found: dict[str, list] = {}
        for e in events:
            assert e.source_task_id == "validate_and_publish", e.source_task_id
            found.setdefault(e.asset.uri, []).append(([a.name for a in e.source_aliases], e.extra))
    return found


def _lineage(dr, task_id) -> dict:
    """The OpenLineage COMPLETE event of the DAG run's task."""
    (event,) = [e for e in lineage_events() if e["eventType"] == "COMPLETE"
                and e["job"]["name"] == f"{dr.dag_id}.{task_id}"
                and e["run"]["facets"]["airflow"]["dagRun"]["run_id"] == dr.run_id]
    return event


def _outputs(event) -> dict[str, str | None]:
    """An OpenLineage event's outputs: their names, with their versions."""
    return {f"{o['namespace']}/{o['name']}": o["facets"].get("version", {}).get("datasetVersion")
            for o in event["outputs"]}


def _videos(uri, opts, partition=None):
    # The DAG rewrote objects this process has listed before: forget s3fs's cached listings and ETags.
    fsspec.filesystem("s3", **opts).invalidate_cache()
    snapshot = open_snapshot(uri, opts)
    part = (ds.field("dt") == partition.split("=", 1)[1]) if partition else None
    table = snapshot.read("videos", columns=["video_id", "uri", "status"], filter=part)
    return sorted(zip(*table.to_pydict().values())), snapshot


def _archive_on_s3(s3, samples, monkeypatch, login: str, secret: str):
    """The samples (and a broken file) under ``archive/``, an AWS connection ``reelscope_s3`` with these credentials,
    and the archive DAG's conf for them."""
    bucket, opts = s3
    videos, broken = samples
    fs = fsspec.filesystem("s3", **opts)
    _upload(fs, [*videos, broken], f"{bucket}/archive")
    conn = {"conn_type": "aws", "login": login, "password": secret,
            "extra": {"endpoint_url": opts["client_kwargs"]["endpoint_url"]}}
    monkeypatch.setenv("AIRFLOW_CONN_REELSCOPE_S3", json.dumps(conn))
    return fs, {"input_uri": f"s3://{bucket}/archive/", "output_uri": f"s3://{bucket}/tables/", "shard_size": 2,
                "aws_conn_id": "reelscope_s3"}


def test_archive_sweep_then_rerun(dags, samples, s3, monkeypatch):
    bucket, opts = s3
    fs, conf = _archive_on_s3(s3, samples, monkeypatch, "testing", "testing")

    dr = dags["reelscope_archive"].test(run_conf=conf)
    assert dr.state == "success", _states(dr)
    shards = dr.get_task_instance("run_plan").xcom_pull(task_ids="run_plan", key="shards")
    assert [(s["videos"], s["committed_before"]) for s in shards] == [(2, False), (1, False)]
    assert sum(s["ok"] for s in shards) == 2 and sum(s["failed"] for s in shards) == 1
    rows, out = _videos(f"s3://{bucket}/tables", opts)
    assert len(rows) == 3 and sorted(r[2] for r in rows) == ["failed", "ok", "ok"]
    assert {t: out.read(t).num_rows > 0 for t in ("keyframes", "segments", "summaries")} == dict.fromkeys(
        ("keyframes", "segments", "summaries"), True)
    (run_file,) = fs.glob(f"{bucket}/tables/_runs/*.json")
    manifest = json.loads(fs.cat(run_file))
    assert manifest["inputs"] == 3 and manifest["videos"] == {"ok": 2, "failed": 1}
    assert manifest["rows"]["videos"] == 3 and len(manifest["committed_shards"]) == 2
    # The maintain task ran last: one file per table left of the two shard commits.
    assert ("maintain", -1, "success") in _states(dr)
    assert len(Output(f"s3://{bucket}/tables", opts).table("keyframes").file_uris()) == 1

    # Published: each table's asset updated once, through the DAG's alias, with the version published.
    events = _asset_events(dr)
    assert sorted(events) == [f"s3://{bucket}/tables/{t}" for t in sorted(TABLES)]
    for table in TABLES:
        ((aliases, extra),) = events[f"s3://{bucket}/tables/{table}"]
        assert aliases == ["reelscope_archive.tables"] and extra["table"] == table
        assert extra["version"] == manifest["versions"][table] and extra["run_id"] == manifest["run_id"]
    # OpenLineage: the input read, the four tables written at the versions published, the models that ran.
    lineage = _lineage(dr, "validate_and_publish")
    assert lineage["inputs"][0]["namespace"] == f"s3://{bucket}" and lineage["inputs"][0]["name"] == "archive"
    assert _outputs(lineage) == {f"s3://{bucket}/tables/{t}": str(manifest["versions"][t]) for t in TABLES}
    assert lineage["run"]["facets"]["reelscope_models"]["models"]["asr"]["ref"] == "tiny:whisper"
    assert set(_outputs(_lineage(dr, "run_plan"))) == set(_outputs(lineage))
    assert _lineage(dr, "list_and_shard")["inputs"] == lineage["inputs"]

    # Nothing new: no shard to run, the run is still validated, the rows stay, and no asset is updated.
    again = dags["reelscope_archive"].test(run_conf=conf)
    assert again.state == "success", _states(again)
    assert again.get_task_instance("run_plan").xcom_pull(task_ids="run_plan", key="shards") == []
    assert _videos(f"s3://{bucket}/tables", opts)[0] == rows
    assert len(fs.glob(f"{bucket}/tables/_runs/*.json")) == 2
    assert _asset_events(again) == {}


def test_daily_interval_and_its_replacement(dags, samples, s3, monkeypatch):
    bucket, opts = s3
    videos, _ = samples
    fs = fsspec.filesystem("s3", **opts)
    _upload(fs, videos, f"{bucket}/inbox/dt=2026-11-22")
    _upload(fs, videos[:1], f"{bucket}/inbox/dt=2026-11-21")  # another day: not this run's
    monkeypatch.setenv("AWS_ENDPOINT_URL", opts["client_kwargs"]["endpoint_url"])
    conf = {"input_uri": f"s3://{bucket}/inbox/", "output_uri": f"s3://{bucket}/tables/", "shard_size": 2}
    midnight = dt.datetime(2026, 11, 23, tzinfo=UTC)  # a manual run gets the last whole day: the 22nd

    dr = dags["reelscope_daily"].test(logical_date=midnight, run_conf=conf)
    assert dr.state == "success", _states(dr)
    rows, out = _videos(f"s3://{bucket}/tables", opts, "dt=2026-11-22")
    assert [r[2] for r in rows] == ["ok", "ok"]
    assert [r[1].rsplit("/", 2)[-2] for r in rows] == ["dt=2026-11-22"] * 2
    assert fs.glob(f"{bucket}/tables/videos/dt=2026-11-22/*.parquet")
    assert _videos(f"s3://{bucket}/tables", opts)[0] == rows  # nothing outside the partition
    first = [c for c in read_commits(out.output) if c.kind == "publish"]

    # The same interval again (a cleared run or a backfill with --reprocess-behavior): replaced, not added to.
    again = dags["reelscope_daily"].test(logical_date=midnight, run_conf=conf)
    assert again.state == "success", _states(again)
    assert _videos(f"s3://{bucket}/tables", opts)[0] == rows
    published = sorted((c.versions["videos"] for c in read_commits(out.output) if c.kind == "publish"))
    assert len(first) == 1 and len(published) == 2 and published[-1] > first[0].versions["videos"]
    fs.invalidate_cache()
    runs = sorted(fs.glob(f"{bucket}/tables/_runs/*.json"))  # named by run id, which starts with the run's time
    assert len(runs) == 2
    manifest = json.loads(fs.cat(runs[-1]))
    assert manifest["inputs"] == 2 and manifest["videos"] == {"ok": 2, "failed": 0}
    assert manifest["partition"] == "dt=2026-11-22" and manifest["interval"][0].startswith("2026-11-22T00:00:00")
    # Each replacement updated the assets, after its publish commit, saying which partition it replaced.
    for run, versions in ((dr, published[0]), (again, published[1])):
        (aliases, extra), = _asset_events(run)[f"s3://{bucket}/tables/videos"]
        assert aliases == ["reelscope_daily.tables"] and extra["partition"] == "dt=2026-11-22"
        assert extra["version"] == versions


def test_a_failed_run_frees_its_output_for_the_next(dags, samples, tmp_path):
    from pipeline.orchestrate import list_and_shard

    videos, _ = samples
    conf = {"input_uri": str(videos[0].parent), "output_uri": str(tmp_path / "out"), "shard_size": 2,
            "ray_conn_id": "no_such_connection",  # every shard task fails
            "aws_conn_id": "", "storage_options": {}}  # dag.test() keeps an earlier run's conf as the params
    dr = dags["reelscope_archive"].test(run_conf=conf)
    states = {(t, i): s for t, i, s in _states(dr)}
    assert dr.state == "failed", states
    assert states[("run_plan", -1)] == "failed" and states[("validate_and_publish", -1)] == "upstream_failed"
    # The teardown ran anyway, and did not make the run look successful: the next run may plan at once.
    assert states[("release_output", -1)] == "success"
    assert list_and_shard(conf["input_uri"], conf["output_uri"], "the-next-run")["pending"] == 3  # with broken.mp4


def test_archive_as_one_ray_job(dags, samples, s3, ray_jobs, monkeypatch, caplog):
    from ray.job_submission import JobStatus, JobSubmissionClient

    from operators.ray_job import submission_id
    from tests.ray_jobs import connection

    bucket, opts = s3
    # Credentials only this connection knows (moto takes any): the job can reach S3 only if they reach it.
    fs, conf = _archive_on_s3(s3, samples, monkeypatch, "job-key-id", "job-secret-key")
    monkeypatch.setenv("AIRFLOW_CONN_RAY_TEST", connection(ray_jobs))
    conf.update(ray_conn_id="ray_test", storage_options={})

    with caplog.at_level("INFO"):
        dr = dags["reelscope_archive"].test(run_conf=conf)
    assert dr.state == "success", _states(dr)
    # One job for the whole run, named by the run and the task's try; the task deferred while it ran.
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "[DAG TEST] running trigger in line" in logged
    job_id = submission_id(dr.dag_id, dr.run_id, "run_plan", -1, 1)
    jobs = JobSubmissionClient(ray_jobs.dashboard_url, headers=ray_jobs.headers())
    info = jobs.get_job_info(job_id)
    assert info.status == JobStatus.SUCCEEDED and info.entrypoint.startswith("python -m pipeline.orchestrate run-plan")
    assert info.runtime_env["env_vars"]["AWS_SECRET_ACCESS_KEY"] == "job-secret-key"
    assert "job-secret-key" not in info.entrypoint and "job-secret-key" not in logged
    assert "job-secret-key" not in jobs.get_job_logs(job_id)

    shards = dr.get_task_instance("run_plan").xcom_pull(task_ids="run_plan", key="shards")
    assert [(s["videos"], s["committed_before"]) for s in shards] == [(2, False), (1, False)]
    # The session's cluster has two nodes (a head, a worker declaring GPUs): the job's pipeline used both.
    plan = dr.get_task_instance("list_and_shard").xcom_pull(task_ids="list_and_shard", key="plan")
    result = RunResult.from_json(fs.cat_file(run_result_path(plan)))
    assert len({node for stage in result.pools.values() for node in stage["nodes"]}) == 2, result.pools
    rows, _ = _videos(f"s3://{bucket}/tables", opts)
    assert sorted(r[2] for r in rows) == ["failed", "ok", "ok"]
    # The task that resumed after the job reports what the job wrote, at the versions its commits left.
    shard_commits = [c for c in read_commits(Output(f"s3://{bucket}/tables", opts)) if c.kind == "shard"]
    committed = {t: str(v) for t, v in max(shard_commits, key=lambda c: c.versions["videos"]).versions.items()}
    assert _outputs(_lineage(dr, "run_plan")) == {f"s3://{bucket}/tables/{t}": committed[t] for t in TABLES}
    assert sorted(_asset_events(dr)) == [f"s3://{bucket}/tables/{t}" for t in sorted(TABLES)]
