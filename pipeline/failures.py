"""Failures outside reelscope (S3 credentials, an endpoint down or stalled, a full disk, the model hub out
of reach) told in one line that names the thing and what to do, instead of a library's traceback.

``outside_failure`` walks the exception's causes, since libraries wrap one another (s3fs in pyarrow, a
loader's error in a ``ModelLoadError``), and answers None for anything it does not know, which then stays a
traceback: a bug should look like one. ``check_hub`` asks the model hub once, before Ray starts, whether it
can be reached at all: inside the model actors the hub client retries every file for a minute and more.
"""
from __future__ import annotations

import dataclasses
import errno
import os
from typing import Iterator
from urllib.parse import urlsplit

_ENDPOINT_HELP = "AWS_ENDPOINT_URL or storage_options.client_kwargs.endpoint_url in the --config file"
HUB_TIMEOUT_S = 5.0


class OutsideError(RuntimeError):
    """Something outside reelscope is missing or down; the message is one line meant for the user."""


def outside_failure(exc: BaseException) -> str | None:
    """One line for a failure outside reelscope, or None when ``exc`` is not one."""
    for e in _chain(exc):
        line = _s3(e) or _disk(e)
        if line:
            return line
    return None


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _endpoint(e) -> str:
    url = getattr(e, "kwargs", {}).get("endpoint_url") or ""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.netloc else "the S3 endpoint"


def _s3(e: BaseException) -> str | None:
    try:
        from botocore import exceptions as boto
    except ImportError:  # no S3 support installed: nothing here came from it
        return None
    if isinstance(e, (boto.NoCredentialsError, boto.PartialCredentialsError)):
        return ("no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or key and "
                "secret under storage_options in the --config file")
    if isinstance(e, (boto.EndpointConnectionError, boto.ConnectTimeoutError)):
        return f"cannot connect to S3 at {_endpoint(e)}: start it, or point {_ENDPOINT_HELP} at one that runs"
    if isinstance(e, boto.ReadTimeoutError):
        return (f"S3 at {_endpoint(e)} did not answer in time, on every retry: check that it is healthy, or raise "
                "storage_options.config_kwargs.read_timeout in the --config file")
    return None


def _disk(e: BaseException) -> str | None:
    full = isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)
    # delta-rs (Rust) reports the OS error in its message only.
    if full or "No space left on device" in str(e) or "Disk quota exceeded" in str(e):
        where = f" writing {e.filename}" if getattr(e, "filename", None) else ""
        return f"disk full{where}: free some space (or write elsewhere with --output) and run again"
    return None




def _hub_ids(models) -> list[tuple[str, object]]:
    """``(role, spec)`` of the models named by a hub id (``org/name``), rather than a path, URI, tiny build,
    bundled weights, openai-whisper name or a model served by an endpoint."""
    out = []
    for field in dataclasses.fields(models):
        spec = getattr(models, field.name)
        ref = spec.ref
        if spec.endpoint is None and ref.count("/") == 1 and ":" not in ref and not os.path.exists(ref):
            out.append((field.name, spec))
    return out


def check_hub(models) -> None:
    """Raise ``OutsideError`` when a hub model is not in the local cache and the hub cannot be reached."""
    from urllib.error import HTTPError, URLError
    from urllib.request import Request, urlopen

    from huggingface_hub import constants, try_to_load_from_cache

    missing = [(role, spec) for role, spec in _hub_ids(models)
               if not isinstance(try_to_load_from_cache(spec.ref, "config.json", revision=spec.revision), str)]
    if not missing:
        return
    role, spec = missing[0]
    where = f"the {role} model {spec.ref!r} is not in the cache"
    if constants.HF_HUB_OFFLINE:
        raise OutsideError(f"{where} and HF_HUB_OFFLINE is set: fetch it once online, or give a local directory "
                           "as its ref in the --config file")
    try:
        urlopen(Request(f"{constants.ENDPOINT}/api/models/{spec.ref}", method="HEAD"), timeout=HUB_TIMEOUT_S).close()
    except HTTPError:  # the hub answered; whether it has the model is for the loader to say
        return
    except (URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise OutsideError(f"{where} and the model hub at {constants.ENDPOINT} cannot be reached ({reason}): "
                           "connect to the network (or set HF_ENDPOINT), or give a local directory as its ref "
                           "in the --config file") from None
