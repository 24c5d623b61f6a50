"""Chat LLMs for summaries: a local causal LM, or any OpenAI-compatible server (vLLM, TGI, llama.cpp...).

Both take an optional JSON schema for the answer: the local model decodes under it (``constrain``), a server
is asked for it as ``response_format``.
"""
from __future__ import annotations

import contextlib
import functools
import http.client
import json
import logging
import os
import socket
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Protocol

import torch

from pipeline.config import ModelSpec

log = logging.getLogger(__name__)


class ChatLlm(Protocol):
    name: str
    context_tokens: int

    def complete(self, messages: list[dict], max_new_tokens: int, schema: dict | None = None) -> str: ...

    def complete_many(self, requests: list[tuple[list[dict], int, dict | None]]) -> list[str | Exception]:
        """Answers to ``(messages, max_new_tokens, schema)`` requests, in order; a request that failed gets its
        exception instead, without failing the others."""
        ...

    def count_tokens(self, text: str) -> int: ...


class LocalChatLlm:
    """A causal LM with a chat template, decoding greedily (summaries should not change between reruns).

    ``path_or_id`` is a hub id, a transformers folder, or a GGUF file (or a folder holding exactly one),
    which transformers dequantizes; a GGUF's own chat template comes with its tokenizer.
    """

    def __init__(
        self, path_or_id: str, device: str = "cpu", context_tokens: int = 4096, revision: str | None = None,
        batch_size: int = 8,
    ):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.name = path_or_id
        self.device = device
        self.batch_size = batch_size
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        source, gguf = gguf_file(path_or_id)
        where = {"gguf_file": gguf} if gguf else {"revision": revision}
        self.tokenizer = AutoTokenizer.from_pretrained(source, **where)
        self.model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **where).to(device).eval()
        # Never promise more context than the model has positions for.
        limit = getattr(self.model.config, "max_position_embeddings", None)
        self.context_tokens = min(context_tokens, limit) if limit else context_tokens
        eos = self.model.generation_config.eos_token_id
        eos = eos if eos is not None else self.tokenizer.eos_token_id
        self.eos_ids = [eos] if isinstance(eos, int) else list(eos)
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.eos_ids[0]
        self._constraint = None  # built on the first schema: it walks the whole vocabulary once

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def complete(self, messages: list[dict], max_new_tokens: int, schema: dict | None = None) -> str:
        (answer,) = self._generate([(messages, max_new_tokens, schema)])
        return answer

    def complete_many(self, requests: list[tuple[list[dict], int, dict | None]]) -> list[str | Exception]:
        """Answers generated ``batch_size`` requests at a time (left-padded, one ``generate`` per batch)."""
        answers: list[str | Exception] = []
        for start in range(0, len(requests), self.batch_size):
            batch = requests[start:start + self.batch_size]
            try:
                answers += self._generate(batch)
            except Exception as exc:  # a batch that breaks is asked one by one: only the bad request fails
                if len(batch) == 1:
                    answers.append(exc)
                else:
                    answers += [self.complete_many([request])[0] for request in batch]
        return answers

    def _generate(self, requests: list[tuple[list[dict], int, dict | None]]) -> list[str]:
        prompts = [
            self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
            for messages, _, _ in requests
        ]
        width = max(len(p) for p in prompts)
        # Left padding: every row's answer then starts at the same position, where generate appends.
        input_ids = torch.tensor([[self.pad_id] * (width - len(p)) + p for p in prompts], device=self.device)
        attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device)
        schemas = [schema for _, _, schema in requests]
        if any(schemas) and not all(schemas):
            raise ValueError("a batch must have a schema for every request or for none")
        processors = [self.schema_processor(schemas)] if schemas[0] else None
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max(r[1] for r in requests),
                do_sample=False, logits_processor=processors, eos_token_id=self.eos_ids, pad_token_id=self.pad_id,
            )
        return [
            self.tokenizer.decode(row[width:width + tokens], skip_special_tokens=True)
            for row, (_, tokens, _) in zip(out, requests)
        ]

    def schema_processor(self, schemas: list[dict]):
        """A logits processor for one ``generate`` call that keeps row ``i``'s answer within ``schemas[i]``."""
        from pipeline.models.constrain import SchemaConstraint

        if self._constraint is None:
            width = self.model.get_output_embeddings().weight.shape[0]
            self._constraint = SchemaConstraint(self.tokenizer, width, self.eos_ids)
        return self._constraint.processor(schemas)


def gguf_file(path_or_id: str) -> tuple[str, str | None]:
    """``(folder, file name)`` when ``path_or_id`` is a GGUF file or a folder whose model is one; else
    ``(path_or_id, None)``."""
    path = Path(path_or_id)
    if path.is_file() and path.suffix == ".gguf":
        return str(path.parent), path.name
    if not path.is_dir() or (path / "config.json").exists():
        return path_or_id, None
    found = sorted(p.name for p in path.glob("*.gguf"))
    if len(found) > 1:
        raise ValueError(f"{path_or_id} holds {len(found)} .gguf files ({', '.join(found)}); name one of them")
    return (str(path), found[0]) if found else (path_or_id, None)


class OpenAiChatLlm:
    """``POST {base_url}/chat/completions``, with nothing but the standard library.

    ``timeout`` bounds each request's whole time, from connecting to the answer's last byte: a socket
    timeout alone bounds each read, so a server sending a byte every few seconds held a request for ever.
    """

    def __init__(
        self, base_url: str, model: str, api_key: str | None = None, context_tokens: int = 8192, timeout: float = 120,
        concurrency: int = 8,
    ):
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self.base_url = base_url.rstrip("/")
        self.name = model
        self.concurrency = concurrency
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.context_tokens = context_tokens
        self.timeout = timeout
        # The strictest answer format the server accepts: a JSON schema, else any JSON object, else plain
        # text. What a server refused once is not asked of it again.
        self._refused: set[str] = set()

    def count_tokens(self, text: str) -> int:
        # No tokenizer here: about four characters a token for English text, rounded up.
        return len(text) // 4 + 1

    def complete(self, messages: list[dict], max_new_tokens: int, schema: dict | None = None) -> str:
        body = {"model": self.name, "messages": messages, "max_tokens": max_new_tokens, "temperature": 0}
        formats = {"json_object": {"type": "json_object"}}
        if schema:
            named = {"name": schema.get("title", "answer"), "schema": schema, "strict": True}
            formats = {"json_schema": {"type": "json_schema", "json_schema": named}} | formats
        for kind, response_format in formats.items():
            if kind in self._refused:
                continue
            try:
                return self._post({**body, "response_format": response_format})
            except urllib.error.HTTPError as exc:
                detail = exc.read().decode(errors="replace")
                if exc.code not in (400, 422) or not ("response_format" in detail or kind in detail):
                    raise
                log.warning("%s refused response_format %s (HTTP %s); asking with less", self.base_url, kind, exc.code)
                self._refused.add(kind)
        return self._post(body)

    def complete_many(self, requests: list[tuple[list[dict], int, dict | None]]) -> list[str | Exception]:
        """Answers with up to ``concurrency`` requests in flight: a server such as vLLM batches what it has
        at once, so one request at a time would leave it nearly idle."""
        from concurrent.futures import ThreadPoolExecutor

        def ask(request: tuple[list[dict], int, dict | None]) -> str | Exception:
            messages, max_new_tokens, schema = request
            try:
                return self.complete(messages, max_new_tokens, schema=schema)
            except Exception as exc:
                return exc

        with ThreadPoolExecutor(max_workers=min(self.concurrency, max(1, len(requests)))) as pool:
            return list(pool.map(ask, requests))

    def _post(self, body: dict) -> str:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(
            f"{self.base_url}/chat/completions", data=json.dumps(body).encode(), headers=headers, method="POST",
        )
        with _Deadline(self.timeout) as deadline:
            try:
                opener = urllib.request.build_opener(_DeadlineHandler(deadline))
                with opener.open(request, timeout=self.timeout) as response:
                    payload = json.loads(response.read())
            except Exception:
                if deadline.passed:
                    raise TimeoutError(
                        f"{self.base_url} gave no complete answer within {self.timeout:g} s"
                    ) from None
                raise
        try:
            return payload["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise ValueError(f"unexpected chat completion from {self.base_url}: {str(payload)[:200]}") from None


class _Deadline:
    """Shuts down the sockets of one request when its time is up, which ends any read blocked on them."""

    def __init__(self, seconds: float):
        self.passed = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            if self.passed:
                _shut(sock)

    def _expire(self) -> None:
        with self._lock:
            self.passed = True
            for sock in self._sockets:
                _shut(sock)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed by its owner: nothing left to stop
        sock.shutdown(socket.SHUT_RDWR)


class _Watched:
    """A connection that hands its socket to a ``_Deadline`` as soon as it has one."""

    def __init__(self, *args, deadline: _Deadline, **kwargs):
        super().__init__(*args, **kwargs)
        self._deadline = deadline

    def connect(self) -> None:
        super().connect()
        self._deadline.watch(self.sock)


class _WatchedHttp(_Watched, http.client.HTTPConnection):
    pass


class _WatchedHttps(_Watched, http.client.HTTPSConnection):
    pass


class _DeadlineHandler(urllib.request.HTTPHandler, urllib.request.HTTPSHandler):
    """urllib's HTTP and HTTPS handlers (proxies and all), over connections watched by one deadline."""

    def __init__(self, deadline: _Deadline):
        super().__init__()
        self._deadline = deadline

    def http_open(self, req):
        return self.do_open(functools.partial(_WatchedHttp, deadline=self._deadline), req)

    def https_open(self, req):
        return self.do_open(functools.partial(_WatchedHttps, deadline=self._deadline), req, context=self._context)


def load_llm(spec: ModelSpec, path_or_id: str, device: str) -> ChatLlm:
    """The summarizer for ``spec``: its endpoint when it names one, else the local model at ``path_or_id``.
    An endpoint's options: ``concurrency`` (requests in flight, default 8) and ``timeout_s`` (each request's
    whole time, default 120)."""
    context = spec.options.get("context_tokens")
    if spec.endpoint:
        return OpenAiChatLlm(
            spec.endpoint, spec.ref, context_tokens=int(context or 8192),
            concurrency=int(spec.options.get("concurrency", 8)), timeout=float(spec.options.get("timeout_s", 120)),
        )
    return LocalChatLlm(
        path_or_id, device=device, context_tokens=int(context or 4096), revision=spec.revision,
        batch_size=spec.batch_size,
    )
