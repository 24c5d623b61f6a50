"""``tests.faultproxy.DroppingProxy`` against moto's real S3 server, and what delta-rs does when the reply
of its commit PUT is lost (the commit happened, the client never heard)."""
from __future__ import annotations

import http.client
from urllib.parse import urlsplit

import pyarrow as pa
import pytest

from tests.faultproxy import DroppingProxy


def _proxy(endpoint: str) -> DroppingProxy:
    parts = urlsplit(endpoint)
    return DroppingProxy(parts.hostname, parts.port)


def _s3fs(endpoint: str, **kw):
    import s3fs

    return s3fs.S3FileSystem(
        key="testing", secret="testing", client_kwargs={"endpoint_url": endpoint}, skip_instance_cache=True, **kw
    )


def _delta_opts(endpoint: str) -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_REGION": "us-east-1",
        "AWS_ALLOW_HTTP": "true",
        "conditional_put": "etag",
    }


def _commit_json(version: int):
    """Predicate: the PUT of the delta log entry of ``version``."""
    name = f"/_delta_log/{version:020d}.json"
    return lambda method, path: method == "PUT" and path.split("?")[0].endswith(name)


def test_s3fs_through_proxy_with_keep_alive(s3_endpoint):
    bucket = "faultproxy-s3fs"
    blobs = {f"{bucket}/k{i}": bytes([i]) * (i * 1000) for i in range(5)}
    blobs[f"{bucket}/big"] = bytes(range(256)) * 4096  # 1 MiB, many recv()s
    with _proxy(s3_endpoint) as proxy:
        fs = _s3fs(proxy.url)
        fs.mkdir(bucket)
        for path, data in blobs.items():
            fs.pipe(path, data)
        assert sorted(fs.ls(bucket)) == sorted(blobs)
        for path, data in blobs.items():
            assert fs.cat(path) == data
        assert fs.info(f"{bucket}/big")["size"] == len(blobs[f"{bucket}/big"])  # a HEAD: no body to wait for
    assert proxy.performed_and_dropped == []
    assert proxy.connections < len(proxy.requests) / 3  # connections were reused
    assert _s3fs(s3_endpoint).cat(f"{bucket}/big") == blobs[f"{bucket}/big"]


def test_chunked_request_body_is_forwarded(s3_endpoint):
    bucket = "faultproxy-chunked"
    _s3fs(s3_endpoint).mkdir(bucket)
    with _proxy(s3_endpoint) as proxy:
        conn = http.client.HTTPConnection(urlsplit(proxy.url).hostname, urlsplit(proxy.url).port, timeout=10)
        for i in range(2):  # twice on one connection: the chunked framing ends where it should
            conn.request("PUT", f"/{bucket}/c{i}", body=iter([b"hello ", b"chunked ", b"world"]), encode_chunked=True)
            response = conn.getresponse()
            response.read()
            assert response.status == 200
        conn.close()
    assert proxy.connections == 1
    assert _s3fs(s3_endpoint).cat(f"{bucket}/c1") == b"hello chunked world"


def test_dropped_reply_put_was_performed_and_retried(s3_endpoint):
    bucket = "faultproxy-drop"
    direct = _s3fs(s3_endpoint)
    direct.mkdir(bucket)
    with _proxy(s3_endpoint) as proxy:
        proxy.drop_reply(lambda method, path: method == "PUT" and path == f"/{bucket}/once")
        _s3fs(proxy.url).pipe(f"{bucket}/once", b"payload")  # aiohttp resends it after the reset: no error
    line = f"PUT /{bucket}/once HTTP/1.1"
    assert proxy.performed_and_dropped == [line]
    assert proxy.requests.count(line) == 2
    assert direct.cat(f"{bucket}/once") == b"payload"


def test_dropped_reply_put_was_performed_though_the_client_failed(s3_endpoint):
    from botocore.exceptions import EndpointConnectionError

    bucket = "faultproxy-drop-noretry"
    direct = _s3fs(s3_endpoint)
    direct.mkdir(bucket)
    line = f"PUT /{bucket}/lost HTTP/1.1"
    with _proxy(s3_endpoint) as proxy:
        proxy.drop_reply(lambda method, path: method == "PUT" and path == f"/{bucket}/lost", times=100)
        fs = _s3fs(proxy.url, config_kwargs={"retries": {"max_attempts": 1, "mode": "standard"}})
        fs.retries = 1  # s3fs's own retry loop, above botocore's
        # seen: 4 PUTs, all performed (2 botocore attempts, each resent once by aiohttp), then a misleading
        # "Could not connect to the endpoint URL"
        with pytest.raises(EndpointConnectionError):
            fs.pipe(f"{bucket}/lost", b"payload")
    assert len(proxy.performed_and_dropped) >= 2
    assert proxy.performed_and_dropped == [line] * proxy.requests.count(line)
    assert direct.cat(f"{bucket}/lost") == b"payload"


def test_deltalake_appends_through_proxy(s3_endpoint):
    from deltalake import DeltaTable, write_deltalake

    bucket = "faultproxy-delta"
    _s3fs(s3_endpoint).mkdir(bucket)
    uri = f"s3://{bucket}/t"
    with _proxy(s3_endpoint) as proxy:
        write_deltalake(uri, pa.table({"x": [1, 2]}), mode="append", storage_options=_delta_opts(proxy.url))
        write_deltalake(uri, pa.table({"x": [3]}), mode="append", storage_options=_delta_opts(proxy.url))
        dt = DeltaTable(uri, storage_options=_delta_opts(proxy.url))
        assert dt.version() == 1
        assert sorted(dt.to_pyarrow_table()["x"].to_pylist()) == [1, 2, 3]
        v0 = DeltaTable(uri, version=0, storage_options=_delta_opts(proxy.url))
        assert v0.to_pyarrow_table()["x"].to_pylist() == [1, 2]
    assert proxy.performed_and_dropped == []
    assert proxy.connections < len(proxy.requests) / 3  # object_store reuses connections too
    # NB: DeltaTable.history() and DeltaTable.is_deltatable() stall here until object_store's request timeout
    # (30 s x retries): the list request leaves the process only after the timeout (seen through this proxy).


@pytest.mark.parametrize("app_txn", [False, True], ids=["plain", "app-transaction"])
def test_deltalake_commit_with_lost_reply(s3_endpoint, app_txn):
    """Seen with deltalake 1.6.6 (object_store 0.13.2): the conditional PUT (If-None-Match: *) of
    ``_delta_log/00000000000000000001.json`` is performed, its reply is lost, and object_store does NOT retry
    it (it is not idempotent): write_deltalake raises a bare ``OSError`` ("Generic S3 error ... Error performing
    PUT .../00000000000000000001.json ... Connection reset by peer (os error 104)"), not CommitFailedError,
    within milliseconds. Yet the commit is there: version 1, each row once, and with a Transaction the table
    records it (transaction_version == 7). delta-rs does not use app transactions to deduplicate: writing again
    with the same Transaction("app", 7) commits version 2 and duplicates the rows. So after such an OSError a
    caller must look at transaction_version() before retrying."""
    from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake

    bucket = f"faultproxy-delta-lost-{'txn' if app_txn else 'plain'}"
    _s3fs(s3_endpoint).mkdir(bucket)
    uri = f"s3://{bucket}/t"
    direct = _delta_opts(s3_endpoint)
    kw = {"commit_properties": CommitProperties(app_transactions=[Transaction("app", 7)])} if app_txn else {}
    write_deltalake(uri, pa.table({"x": [1, 2]}), storage_options=direct)
    with _proxy(s3_endpoint) as proxy:
        proxy.drop_reply(_commit_json(1))
        with pytest.raises(OSError) as err:
            write_deltalake(uri, pa.table({"x": [3]}), mode="append", storage_options=_delta_opts(proxy.url), **kw)
    assert type(err.value) is OSError
    message = str(err.value)
    assert "Generic S3 error" in message
    assert "Error performing PUT" in message and "/_delta_log/00000000000000000001.json" in message
    assert "Connection reset by peer" in message
    log_put = f"PUT /{bucket}/t/_delta_log/00000000000000000001.json HTTP/1.1"
    assert proxy.performed_and_dropped == [log_put]
    assert proxy.requests.count(log_put) == 1  # never retried

    dt = DeltaTable(uri, storage_options=direct)
    assert dt.version() == 1
    assert dt.transaction_version("app") == (7 if app_txn else None)
    assert sorted(dt.to_pyarrow_table()["x"].to_pylist()) == [1, 2, 3]

    if app_txn:  # a blind retry with the same app transaction is not refused: rows twice
        write_deltalake(uri, pa.table({"x": [3]}), mode="append", storage_options=direct, **kw)
        dt = DeltaTable(uri, storage_options=direct)
        assert dt.version() == 2
        assert dt.transaction_version("app") == 7
        assert sorted(dt.to_pyarrow_table()["x"].to_pylist()) == [1, 2, 3, 3]
