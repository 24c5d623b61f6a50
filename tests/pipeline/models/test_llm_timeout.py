"""An endpoint's whole request is bounded in time, against a loopback server that drips its answer.

A socket timeout bounds each read only: a server that sends a byte every half second never trips a 2 s
socket timeout, and its 200-byte answer would take 100 s.
"""
from __future__ import annotations

import contextlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import pytest

from pipeline.config import ModelSpec
from pipeline.models.llm import OpenAiChatLlm, load_llm
from pipeline.summarize import VideoText, summarize_videos

LIMIT_S = 2.0
MARGIN_S = 1.5
DRIP_EVERY_S = 0.5
MESSAGES = [{"role": "user", "content": "Say hi."}]


@contextlib.contextmanager
def _dripping_server(in_headers: bool = False, delay: float | None = None) -> Iterator[str]:
    """The URL of a chat-completions endpoint on 127.0.0.1 that sends its answer one byte at a time, in the
    body or, with ``in_headers``, already in the headers; ``delay``: answers at once after that many seconds."""
    stop = threading.Event()
    answer = {"choices": [{"message": {"role": "assistant", "content": json.dumps({"hi": "there"})}}]}
    body = json.dumps(answer).encode().ljust(200)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            if delay is not None:
                time.sleep(delay)
                self._headers(len(body))
                self.wfile.write(body)
            elif in_headers:
                self.send_response(200)
                self.wfile.write(b"".join(self._headers_buffer))
                self._headers_buffer = []
                self._drip(b"X-Slow: " + b"z" * 200 + b"\r\n")
            else:
                self._headers(len(body))
                self._drip(body)

        def _headers(self, length: int):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(length))
            self.end_headers()

        def _drip(self, data: bytes):
            for i in range(len(data)):
                if stop.wait(DRIP_EVERY_S):
                    return
                try:
                    self.wfile.write(data[i:i + 1])
                    self.wfile.flush()
                except OSError:  # the client gave up, as it should
                    return

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    finally:
        stop.set()
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.parametrize("in_headers", [False, True], ids=["body", "headers"])
def test_a_dripping_answer_ends_at_the_limit(in_headers):
    with _dripping_server(in_headers=in_headers) as url:
        llm = OpenAiChatLlm(url, "served-model", timeout=LIMIT_S)
        started = time.monotonic()
        with pytest.raises(TimeoutError, match=f"{url} gave no complete answer within 2 s"):
            llm.complete(MESSAGES, 16)
        took = time.monotonic() - started
    assert LIMIT_S - 0.1 < took < LIMIT_S + MARGIN_S


def test_an_answer_within_the_limit_arrives_whole():
    with _dripping_server(delay=1.0) as url:
        llm = OpenAiChatLlm(url, "served-model", timeout=LIMIT_S)
        assert json.loads(llm.complete(MESSAGES, 16)) == {"hi": "there"}


def test_a_summary_from_a_dripping_endpoint_fails_that_video_within_the_limit():
    with _dripping_server() as url:
        spec = ModelSpec("served-model", endpoint=url, max_new_tokens=64, options={"timeout_s": LIMIT_S})
        llm = load_llm(spec, spec.ref, "cpu")
        videos = [VideoText(10.0, [(0.0, "a red car")], [(0.0, 2.0, "hello there")]) for _ in range(2)]
        started = time.monotonic()
        results = summarize_videos(llm, videos, spec.max_new_tokens)
        took = time.monotonic() - started
    # Both requests are in flight at once, so both end at the one limit.
    assert took < LIMIT_S + MARGIN_S
    assert [r.status for r in results] == ["error", "error"]
    assert results[0].raw == f"TimeoutError: {url} gave no complete answer within 2 s"


def test_the_limit_defaults_to_two_minutes():
    assert load_llm(ModelSpec("m", endpoint="http://127.0.0.1:9/v1"), "m", "cpu").timeout == 120.0
