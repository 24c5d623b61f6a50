"""fsspec storage options from the places S3 settings usually live: the environment, an Airflow AWS
connection, a config file, explicit options.

botocore already reads ``AWS_*`` variables where the code runs; turning them into explicit options matters
because the settings (endpoint, region, timeouts) travel by value inside the stages to Ray workers, which
may run on machines (or in processes started earlier) that do not share the orchestrator's environment.
Credentials do not travel with them: ``split_secrets`` turns them into the ``AWS_*`` variables of the run's
Ray runtime environment, and ``without_secrets`` strips them wherever options become visible (a pickled
stage, a Ray Job's command line, a log).

``with_s3_defaults`` puts time limits under whatever the user gives: by default a stalled endpoint is
retried for minutes (s3fs tries each call 5 times, botocore each try up to 5 times, each read waits 15 s);
a run should fail in under a minute and say why.
"""
from __future__ import annotations

import copy
import logging
import os
import re
from typing import Any, Mapping

log = logging.getLogger(__name__)

# s3fs tries every call 5 times itself (a fixed number: its ``retries`` is not an option), so botocore makes
# one attempt per try: a stalled endpoint fails after 5 x 10 s plus 1 s of back-off, a refused connection at
# once. Each value can be set in the storage options (``config_kwargs``), key by key.
S3_DEFAULTS: Mapping[str, Any] = {
    "config_kwargs": {"connect_timeout": 5, "read_timeout": 10, "retries": {"total_max_attempts": 1, "mode": "standard"}},
}
# Option names that hold credentials in s3fs, botocore, Airflow connections and other fsspec backends.
_SECRET = re.compile(r"^(key|secret|token|username)$|secret|token|password|passwd|credential|access_key|private_key|"
                     r"api_key|account_key|customer_?key|sas|auth", re.IGNORECASE)


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


def with_s3_defaults(options: Mapping[str, Any] | None, *uris: str) -> dict:
    """``options`` over ``S3_DEFAULTS`` when any of ``uris`` is on S3 (key by key: a user's ``read_timeout``
    keeps the default ``connect_timeout``); unchanged otherwise, since other backends refuse these keys."""
    if not any(str(u).startswith(("s3://", "s3a://")) for u in uris):
        return dict(options or {})
    # A copy: botocore rewrites the ``retries`` mapping it is given in place.
    return merge_storage_options(copy.deepcopy(S3_DEFAULTS), options)


def without_secrets(options: Any) -> Any:
    """Options safe to show in a job's command line, a log or an error: every key that names a credential
    removed at any depth (``key``, ``client_kwargs.aws_secret_access_key``, ``config_kwargs...token``)."""
    if isinstance(options, Mapping):
        return {k: without_secrets(v) for k, v in options.items() if not _SECRET.search(str(k))}
    if isinstance(options, (list, tuple)):
        return [without_secrets(v) for v in options]
    return options


# Where s3fs and botocore take each AWS credential, and the variable botocore reads it from instead.
_AWS_VARIABLES = {
    "AWS_ACCESS_KEY_ID": (("key",), ("client_kwargs", "aws_access_key_id")),
    "AWS_SECRET_ACCESS_KEY": (("secret",), ("client_kwargs", "aws_secret_access_key")),
    "AWS_SESSION_TOKEN": (("token",), ("client_kwargs", "aws_session_token")),
}


def split_secrets(options: Mapping[str, Any] | None) -> tuple[dict, dict[str, str]]:
    """``(options without credentials, the AWS_* variables that carry them)``: the first travel by value to
    Ray workers, the second through the run's runtime environment, where botocore reads them. A credential
    with no such variable (a password, an SSE-C key) stays on the driver, which lists and commits; its name
    is logged, since workers then read with the credentials of their own environment."""
    options = dict(options or {})
    env: dict[str, str] = {}
    for variable, places in _AWS_VARIABLES.items():
        for place in places:
            value = _at(options, place)
            if value:
                env[variable] = str(value)
                break
    kept = without_secrets(options)
    carried = {place for places in _AWS_VARIABLES.values() for place in places}
    left = sorted(".".join(p) for p in _secret_places(options) if p not in carried)
    if left:
        log.warning("storage option(s) %s hold credentials that Ray workers are not given; they read media "
                    "with the credentials of their own environment", ", ".join(left))
    return kept, env


def _at(options: Mapping[str, Any], place: tuple[str, ...]) -> Any:
    for key in place:
        if not isinstance(options, Mapping):
            return None
        options = options.get(key)
    return options


def _secret_places(options: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Where ``without_secrets`` removes something: each credential's path of keys."""
    if not isinstance(options, Mapping):
        return []
    places = []
    for k, v in options.items():
        if _SECRET.search(str(k)):
            if v not in (None, ""):
                places.append((*prefix, str(k)))
        else:
            places.extend(_secret_places(v, (*prefix, str(k))))
    return places
