"""The options users already pass (s3fs's) as delta-rs reads them, and an output in the old layout refused."""
from __future__ import annotations

import pytest

from pipeline.orchestrate.storage import with_s3_defaults
from pipeline.store import Output, OutputError, delta_storage_options, open_snapshot


def test_s3fs_options_map_onto_delta_rs():
    opts = with_s3_defaults({"key": "k", "secret": "s", "token": "t",
                             "client_kwargs": {"endpoint_url": "http://127.0.0.1:9000", "region_name": "eu-west-1"}},
                            "s3://lake/out")
    assert delta_storage_options(opts, "s3://lake/out") == {
        "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_SESSION_TOKEN": "t",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_ALLOW_HTTP": "true", "AWS_REGION": "eu-west-1",
        # s3fs's time limits (S3_DEFAULTS: 5 s to connect, 10 s a read) bound delta-rs's requests too.
        "connect_timeout": "5s", "timeout": "60s", "max_retries": "3", "retry_timeout": "30s",
        # Commits by conditional PUT: no lock service needed.
        "conditional_put": "etag",
    }


def test_delta_native_options_pass_through_and_win():
    opts = {"key": "k", "secret": "s", "AWS_REGION": "ap-south-1", "conditional_put": "etag", "AWS_S3_LOCKING_PROVIDER": "dynamodb"}
    mapped = delta_storage_options(opts, "s3://lake/out")
    assert mapped["AWS_REGION"] == "ap-south-1" and mapped["AWS_S3_LOCKING_PROVIDER"] == "dynamodb"
    assert delta_storage_options({}, "/local/folder") == {}


def test_credentials_left_to_the_environment_are_not_invented(monkeypatch):
    monkeypatch.setenv("AWS_REGION", "us-west-2")
    mapped = delta_storage_options({}, "s3://lake/out")
    assert "AWS_ACCESS_KEY_ID" not in mapped and mapped["AWS_REGION"] == "us-west-2"


def test_an_output_in_the_manifest_layout_says_to_migrate(tmp_path):
    (tmp_path / "out" / "_manifests").mkdir(parents=True)
    (tmp_path / "out" / "_manifests" / "shard-0123456789abcdef.json").write_text("{}")
    with pytest.raises(OutputError) as told:
        open_snapshot(str(tmp_path / "out"))
    assert str(told.value) == (f"output {tmp_path / 'out'} holds tables in the manifest layout of earlier reelscope "
                               f"versions; convert them with `reelscope migrate --output {tmp_path / 'out'}` first")
    with pytest.raises(OutputError, match="reelscope migrate"):
        Output(str(tmp_path / "out")).check_writable()
