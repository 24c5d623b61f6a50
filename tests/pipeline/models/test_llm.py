"""Chat LLMs: the tiny local model end to end, and the OpenAI-compatible client against a loopback server."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pipeline.config import ModelSpec
from pipeline.models.llm import LocalChatLlm, OpenAiChatLlm, gguf_file, load_llm
from pipeline.summarize import VideoText, answer_schema, summarize_videos

MESSAGES = [{"role": "system", "content": "Answer in JSON."}, {"role": "user", "content": "Say hi."}]
SCHEMA = answer_schema(30.0, 256)


def test_local_llm_generates_from_its_chat_template(tiny_path):
    llm = LocalChatLlm(tiny_path("llm"), context_tokens=100_000)
    assert llm.context_tokens == 1024  # capped at the model's positions
    answer = llm.complete(MESSAGES, max_new_tokens=8)
    assert isinstance(answer, str)
    assert llm.complete(MESSAGES, max_new_tokens=8) == answer  # greedy
    assert 0 < llm.count_tokens("a photo of a cat") < len("a photo of a cat")


def test_local_llm_decodes_under_a_schema(tiny_path):
    llm = LocalChatLlm(tiny_path("llm"))
    answer = llm.complete(MESSAGES, max_new_tokens=256, schema=SCHEMA)
    # Random weights, yet one compact JSON object of the schema's shape and bounds, and nothing after it.
    value = json.loads(answer)
    assert answer == json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    props = SCHEMA["properties"]
    assert list(value) == ["title", "summary", "timeline"]
    assert 1 <= len(value["title"]) <= props["title"]["maxLength"] and value["title"] == value["title"].strip()
    assert 1 <= len(value["summary"]) <= props["summary"]["maxLength"]
    assert len(value["timeline"]) <= props["timeline"]["maxItems"]
    for item in value["timeline"]:
        assert list(item) == ["timestamp_s", "text"] and isinstance(item["timestamp_s"], int)
        assert 0 <= item["timestamp_s"] <= 30 and 1 <= len(item["text"]) <= 30
    assert llm.complete(MESSAGES, max_new_tokens=256, schema=SCHEMA) == answer  # greedy, and a fresh parse state


def test_gguf_refs_name_a_file_or_a_folder_of_one(tmp_path):
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "m.gguf").write_bytes(b"")
    (tmp_path / "two").mkdir()
    for name in ("a.gguf", "b.gguf"):
        (tmp_path / "two" / name).write_bytes(b"")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    assert gguf_file(str(tmp_path / "one" / "m.gguf")) == (str(tmp_path / "one"), "m.gguf")
    assert gguf_file(str(tmp_path / "one")) == (str(tmp_path / "one"), "m.gguf")
    assert gguf_file(str(tmp_path / "hf")) == (str(tmp_path / "hf"), None)
    assert gguf_file("Qwen/Qwen2.5-0.5B-Instruct") == ("Qwen/Qwen2.5-0.5B-Instruct", None)
    with pytest.raises(ValueError, match="holds 2 .gguf files"):
        gguf_file(str(tmp_path / "two"))


class _ChatServer:
    """A chat-completions endpoint on 127.0.0.1 that records requests and answers from a script."""

    def __init__(self):
        self.requests: list[dict] = []
        self.refused: set[str] = set()  # response_format types answered with HTTP 400
        self.delay = 0.0  # seconds before each answer, as a busy server takes
        self.content: str | None = None  # the answer to give; else the last message, echoed
        self.in_flight = self.max_in_flight = 0
        lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                with lock:
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                time.sleep(server.delay)
                with lock:
                    server.in_flight -= 1
                kind = body.get("response_format", {}).get("type")
                if kind in server.refused:
                    self._send(400, {"error": {"message": f"response_format type {kind} is not supported"}})
                elif body["model"] == "broken":
                    self._send(200, {"choices": []})
                else:
                    content = server.content or json.dumps({"echo": body["messages"][-1]["content"]})
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
    assert request["body"]["response_format"] == {"type": "json_object"}  # no schema: any JSON object
    assert llm.count_tokens("x" * 40) == 11 and llm.context_tokens == 2048


def test_openai_client_asks_for_the_schema(chat_server):
    llm = OpenAiChatLlm(chat_server.url, "served-model", timeout=5)
    assert json.loads(llm.complete(MESSAGES, 16, schema=SCHEMA)) == {"echo": "Say hi."}
    (request,) = chat_server.requests
    assert request["body"]["response_format"] == {
        "type": "json_schema", "json_schema": {"name": "video_summary", "schema": SCHEMA, "strict": True}}


def _formats(server) -> list[str | None]:
    return [r["body"].get("response_format", {}).get("type") for r in server.requests]


def test_openai_client_falls_back_to_json_mode_where_schemas_are_refused(chat_server):
    chat_server.refused = {"json_schema"}
    llm = OpenAiChatLlm(chat_server.url, "served-model", timeout=5)
    assert json.loads(llm.complete(MESSAGES, 8, schema=SCHEMA)) == {"echo": "Say hi."}
    llm.complete(MESSAGES, 8, schema=SCHEMA)
    assert _formats(chat_server) == ["json_schema", "json_object", "json_object"]  # refused once, not asked again


def test_openai_client_drops_response_format_where_all_are_refused(chat_server, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    chat_server.refused = {"json_schema", "json_object"}
    llm = OpenAiChatLlm(chat_server.url, "served-model", timeout=5)
    llm.complete(MESSAGES, 8, schema=SCHEMA)
    llm.complete(MESSAGES, 8, schema=SCHEMA)
    llm.complete(MESSAGES, 8)
    assert _formats(chat_server) == ["json_schema", "json_object", None, None, None]
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


def test_endpoint_summaries_keep_requests_in_flight(chat_server):
    # A server that takes 1 s an answer: 16 videos with 8 requests in flight take two waves, not 16 s.
    chat_server.delay = 1.0
    chat_server.content = json.dumps({"title": "t", "summary": "s", "timeline": [{"timestamp_s": 2, "text": "x"}]})
    llm = OpenAiChatLlm(chat_server.url, "served-model", timeout=5)
    videos = [VideoText(30.0, [], [(1.0, 3.0, f"video {i} says hello")]) for i in range(16)]
    results = summarize_videos(llm, videos, max_new_tokens=256)
    assert [r.status for r in results] == ["ok"] * 16 and len(chat_server.requests) == 16
    assert chat_server.max_in_flight == 8 == llm.concurrency
    said = [r["body"]["messages"][-1]["content"] for r in chat_server.requests]
    assert sorted(f"video {i} says" in " ".join(said) for i in range(16)) == [True] * 16


def test_local_llm_generates_batches_left_padded(tiny_path, monkeypatch):
    llm = LocalChatLlm(tiny_path("llm"), batch_size=2)
    calls = []
    real = llm.model.generate
    monkeypatch.setattr(llm.model, "generate", lambda **kw: calls.append(kw["input_ids"].shape) or real(**kw))
    requests = [([{"role": "user", "content": "Say hi" + "!" * i}], 96, SCHEMA) for i in range(3)]
    answers = llm.complete_many(requests)
    lengths = [len(llm.tokenizer.apply_chat_template(m, add_generation_prompt=True, return_dict=True)["input_ids"])
               for m, _, _ in requests]
    assert lengths[0] < lengths[1]  # rows of different lengths share one padded width
    assert [tuple(shape) for shape in calls] == [(2, lengths[1]), (1, lengths[2])]
    assert all(isinstance(json.loads(a), dict) for a in answers)
    # Padding changes nothing: each answer is what the request gets alone.
    assert answers == [llm.complete(m, n, schema=s) for m, n, s in requests]
