"""Chat LLMs: the tiny local model end to end, and the OpenAI-compatible client against a loopback server."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pipeline.config import ModelSpec
from pipeline.models.llm import LocalChatLlm, OpenAiChatLlm, load_llm

MESSAGES = [{"role": "system", "content": "Answer in JSON."}, {"role": "user", "content": "Say hi."}]


def test_local_llm_generates_from_its_chat_template(tiny_path):
    llm = LocalChatLlm(tiny_path("llm"), context_tokens=100_000)
    assert llm.context_tokens == 1024  # capped at the model's positions
    answer = llm.complete(MESSAGES, max_new_tokens=8)
    assert isinstance(answer, str)
    assert llm.complete(MESSAGES, max_new_tokens=8) == answer  # greedy
    assert 0 < llm.count_tokens("a photo of a cat") < len("a photo of a cat")


class _ChatServer:
    """A chat-completions endpoint on 127.0.0.1 that records requests and answers from a script."""

    def __init__(self):
        self.requests: list[dict] = []
        self.refuse_json_mode = False
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                if server.refuse_json_mode and "response_format" in body:
                    self._send(400, {"error": {"message": "response_format is not supported"}})
                elif body["model"] == "broken":
                    self._send(200, {"choices": []})
                else:
                    content = json.dumps({"echo": body["messages"][-1]["content"]})
                    self._send(200, {"choices": [{"message": {"role": "assistant", "content": content}}]})

            def _send(self, status, payload):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):  # keep the test output quiet
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def chat_server():
    with _ChatServer() as server:
        yield server


def test_openai_client_posts_chat_completions(chat_server):
    llm = OpenAiChatLlm(chat_server.url + "/", "served-model", api_key="sk-test", context_tokens=2048, timeout=5)
    assert json.loads(llm.complete(MESSAGES, max_new_tokens=16)) == {"echo": "Say hi."}
    (request,) = chat_server.requests
    assert request["path"] == "/v1/chat/completions" and request["auth"] == "Bearer sk-test"
    assert request["body"]["model"] == "served-model" and request["body"]["messages"] == MESSAGES
    assert request["body"]["max_tokens"] == 16 and request["body"]["temperature"] == 0
    assert request["body"]["response_format"] == {"type": "json_object"}
    assert llm.count_tokens("x" * 40) == 11 and llm.context_tokens == 2048


def test_openai_client_drops_json_mode_where_refused(chat_server, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    chat_server.refuse_json_mode = True
    llm = OpenAiChatLlm(chat_server.url, "served-model", timeout=5)
    llm.complete(MESSAGES, 8)
    llm.complete(MESSAGES, 8)
    with_format = ["response_format" in r["body"] for r in chat_server.requests]
    assert with_format == [True, False, False]  # refused once, then never asked again
    assert chat_server.requests[0]["auth"] is None


def test_openai_client_reports_malformed_replies(chat_server):
    with pytest.raises(ValueError, match="unexpected chat completion"):
        OpenAiChatLlm(chat_server.url, "broken", timeout=5).complete(MESSAGES, 8)


def test_load_llm_picks_endpoint_or_local(tiny_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "from-env")
    served = load_llm(ModelSpec("served", endpoint="http://127.0.0.1:9/v1", options={"context_tokens": 3000}), "served",
                      "cpu")
    assert isinstance(served, OpenAiChatLlm) and served.context_tokens == 3000 and served.api_key == "from-env"
    local = load_llm(ModelSpec("tiny:llm", options={"context_tokens": 512}), tiny_path("llm"), "cpu")
    assert isinstance(local, LocalChatLlm) and local.context_tokens == 512
