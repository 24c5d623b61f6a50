"""Credentials never reach what is printed, logged or sent with a job, however s3fs spells them."""
from __future__ import annotations

import json

from pipeline.config import load_config
from pipeline.orchestrate import (
    merge_storage_options, storage_options_from_connection, storage_options_from_env, without_secrets,
)

# Every way s3fs, botocore and an Airflow connection take a credential, each with a value of its own.
SPELLINGS = {
    "key": "S-key", "secret": "S-secret", "token": "S-token", "username": "S-username", "password": "S-password",
    "client_kwargs": {
        "aws_access_key_id": "S-akid", "aws_secret_access_key": "S-sak", "aws_session_token": "S-ast",
        "endpoint_url": "http://minio:9000", "region_name": "eu-west-1",
    },
    "config_kwargs": {"connect_timeout": 3, "proxies_config": {"proxy_client_cert": "cert.pem", "proxy_password": "S-pp"}},
    "s3_additional_kwargs": {"SSECustomerKey": "S-ssec", "ServerSideEncryption": "AES256"},
}


def test_every_credential_spelling_is_stripped_at_any_depth():
    shown = json.dumps(without_secrets(SPELLINGS))
    assert "S-" not in shown, shown
    kept = without_secrets(SPELLINGS)
    assert kept["client_kwargs"] == {"endpoint_url": "http://minio:9000", "region_name": "eu-west-1"}
    assert kept["config_kwargs"]["connect_timeout"] == 3 and kept["s3_additional_kwargs"] == {"ServerSideEncryption": "AES256"}


def test_options_layered_from_environment_and_connection_lose_their_secrets():
    env = storage_options_from_env({"AWS_ACCESS_KEY_ID": "E-id", "AWS_SECRET_ACCESS_KEY": "E-secret",
                                    "AWS_SESSION_TOKEN": "E-token", "AWS_ENDPOINT_URL": "http://minio:9000"})
    conn = storage_options_from_connection("C-login", "C-password", {"aws_session_token": "C-token"})
    shown = json.dumps(without_secrets(merge_storage_options(env, conn, SPELLINGS)))
    assert not any(s in shown for s in ("E-", "C-", "S-")) and "minio:9000" in shown


def test_a_run_configuration_does_not_print_its_credentials(tmp_path):
    (tmp_path / "c.yaml").write_text(json.dumps({"storage_options": SPELLINGS}))
    config = load_config("s3://in/", "s3://out/", config_file=str(tmp_path / "c.yaml"))
    assert config.storage_options["client_kwargs"]["aws_secret_access_key"] == "S-sak"  # the run still has them
    assert "S-" not in repr(config) and "S-" not in str(config)
