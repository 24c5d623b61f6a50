import json

import pytest

from operators.common import as_bool, as_dict, resolve_storage_options


def test_storage_options_from_an_airflow_connection(monkeypatch):
    conn = {"conn_type": "aws", "login": "minio-user", "password": "minio-pass",
            "extra": {"endpoint_url": "http://minio:9000", "region_name": "eu-west-1"}}
    monkeypatch.setenv("AIRFLOW_CONN_REELSCOPE_S3", json.dumps(conn))
    opts = resolve_storage_options("reelscope_s3", '{"client_kwargs": {"region_name": "us-east-1"}}')
    assert opts == {"key": "minio-user", "secret": "minio-pass",
                    "client_kwargs": {"endpoint_url": "http://minio:9000", "region_name": "us-east-1"}}
    assert resolve_storage_options("", None) == {}


def test_param_coercions():
    assert as_bool("False") is False and as_bool("true") is True and as_bool(True) is True
    with pytest.raises(ValueError):
        as_bool("maybe")
    assert as_dict("") == {} and as_dict('{"a": 1}') == {"a": 1} and as_dict({"b": 2}) == {"b": 2}


def test_a_failed_validation_is_not_retried(tmp_path):
    from airflow.sdk.exceptions import AirflowFailException

    from operators import ListAndShardOperator, ValidateAndPublishOperator

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.mp4").write_bytes(b"never processed")
    pushed = {}
    ti = type("TI", (), {"xcom_push": lambda self, key, value: pushed.__setitem__(key, value)})()
    listing = ListAndShardOperator(task_id="list", input_uri=str(tmp_path / "in"), output_uri=str(tmp_path / "out"),
                                   run_key="r1")
    assert listing.execute({"ti": ti})["shards"] == 1 and pushed["counts"]["pending"] == 1
    with pytest.raises(AirflowFailException, match="has no videos row"):
        ValidateAndPublishOperator(task_id="validate", plan_uri=pushed["plan"]).execute({})
