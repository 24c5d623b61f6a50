"""fsspec storage options from the places S3 settings usually live: the environment, an Airflow AWS
connection, a config file, explicit options.

botocore already reads ``AWS_*`` variables where the code runs; turning them into explicit options matters
because the options travel inside the ``RunConfig`` to Ray workers, which may run on machines (or in
processes started earlier) that do not share the orchestrator's environment. ``without_secrets`` strips
credentials wherever options become visible, as in a Ray Job's command line.
"""
from __future__ import annotations

import os
from typing import Any, Mapping


def merge_storage_options(*layers: Mapping[str, Any] | None) -> dict:
    """Later layers win; ``client_kwargs`` and ``config_kwargs`` are merged key by key, not replaced."""
    merged: dict[str, Any] = {}
    for layer in layers:
        for key, value in (layer or {}).items():
            if key in ("client_kwargs", "config_kwargs") and isinstance(value, Mapping):
                merged[key] = {**merged.get(key, {}), **value}
            else:
                merged[key] = value
    return merged


def storage_options_from_env(environ: Mapping[str, str] | None = None) -> dict:
    """Credentials, endpoint and region named by the standard AWS variables (``AWS_ENDPOINT_URL_S3`` wins
    over ``AWS_ENDPOINT_URL``, as in botocore), as s3fs options; empty when none is set."""
    env = os.environ if environ is None else environ
    opts: dict[str, Any] = {}
    # A key without its secret is left to botocore, which reports the half-set pair better than s3fs.
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        opts["key"], opts["secret"] = env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]
        if env.get("AWS_SESSION_TOKEN"):
            opts["token"] = env["AWS_SESSION_TOKEN"]
    client: dict[str, str] = {}
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint:
        client["endpoint_url"] = endpoint
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if region:
        client["region_name"] = region
    if client:
        opts["client_kwargs"] = client
    return opts


def storage_options_from_connection(
    login: str | None, password: str | None, extra: Mapping[str, Any] | None
) -> dict:
    """s3fs options from the fields of an Airflow AWS connection, read the way the Amazon provider reads
    them (``extra.endpoint_url`` or ``extra.service_config.s3.endpoint_url``, ``extra.region_name``,
    ``extra.aws_session_token``), without needing that provider installed."""
    extra = dict(extra or {})
    opts: dict[str, Any] = {}
    key = login or extra.get("aws_access_key_id")
    secret = password or extra.get("aws_secret_access_key")
    if key:
        opts["key"] = key
    if secret:
        opts["secret"] = secret
    if extra.get("aws_session_token"):
        opts["token"] = extra["aws_session_token"]
    client: dict[str, Any] = {}
    endpoint = extra.get("endpoint_url") or (extra.get("service_config") or {}).get("s3", {}).get("endpoint_url")
    if endpoint:
        client["endpoint_url"] = endpoint
    if extra.get("region_name"):
        client["region_name"] = extra["region_name"]
    if client:
        opts["client_kwargs"] = client
    return opts


def without_secrets(options: Mapping[str, Any]) -> dict:
    """Options safe to show in a job's command line or a log: credentials removed."""
    return {k: v for k, v in options.items() if k not in ("key", "secret", "token", "password")}
