"""Chat LLMs for summaries: a local causal LM, or any OpenAI-compatible server (vLLM, TGI, llama.cpp...)."""
from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.request
from typing import Protocol

import torch

from pipeline.config import ModelSpec

log = logging.getLogger(__name__)


class ChatLlm(Protocol):
    name: str
    context_tokens: int

    def complete(self, messages: list[dict], max_new_tokens: int) -> str: ...

    def count_tokens(self, text: str) -> int: ...


class LocalChatLlm:
    """A causal LM with a chat template, decoding greedily (summaries should not change between reruns)."""

    def __init__(self, path_or_id: str, device: str = "cpu", context_tokens: int = 4096, revision: str | None = None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.name = path_or_id
        self.device = device
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        self.tokenizer = AutoTokenizer.from_pretrained(path_or_id, revision=revision)
        self.model = AutoModelForCausalLM.from_pretrained(path_or_id, revision=revision, dtype=dtype).to(device).eval()
        # Never promise more context than the model has positions for.
        limit = getattr(self.model.config, "max_position_embeddings", None)
        self.context_tokens = min(context_tokens, limit) if limit else context_tokens
        pad = self.tokenizer.pad_token_id
        self._pad_id = pad if pad is not None else self.tokenizer.eos_token_id

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def complete(self, messages: list[dict], max_new_tokens: int) -> str:
        inputs = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True,
        ).to(self.device)
        with torch.inference_mode():
            out = self.model.generate(
                **inputs, max_new_tokens=max_new_tokens, do_sample=False,
                pad_token_id=self._pad_id,
            )
        return self.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


class OpenAiChatLlm:
    """``POST {base_url}/chat/completions``, with nothing but the standard library."""

    def __init__(
        self, base_url: str, model: str, api_key: str | None = None, context_tokens: int = 8192, timeout: float = 120,
    ):
        self.base_url = base_url.rstrip("/")
        self.name = model
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.context_tokens = context_tokens
        self.timeout = timeout
        # JSON mode keeps answers parseable where the server offers it; servers that refuse the field are
        # asked again without it, and not asked with it again.
        self._json_mode = True

    def count_tokens(self, text: str) -> int:
        # No tokenizer here: about four characters a token for English text, rounded up.
        return len(text) // 4 + 1

    def complete(self, messages: list[dict], max_new_tokens: int) -> str:
        body = {"model": self.name, "messages": messages, "max_tokens": max_new_tokens, "temperature": 0}
        if self._json_mode:
            try:
                return self._post({**body, "response_format": {"type": "json_object"}})
            except urllib.error.HTTPError as exc:
                detail = exc.read().decode(errors="replace")
                if exc.code not in (400, 422) or "response_format" not in detail:
                    raise
                log.warning("%s refused response_format (HTTP %s); asking without it", self.base_url, exc.code)
                self._json_mode = False
        return self._post(body)

    def _post(self, body: dict) -> str:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(
            f"{self.base_url}/chat/completions", data=json.dumps(body).encode(), headers=headers, method="POST",
        )
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            payload = json.loads(response.read())
        try:
            return payload["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise ValueError(f"unexpected chat completion from {self.base_url}: {str(payload)[:200]}") from None


def load_llm(spec: ModelSpec, path_or_id: str, device: str) -> ChatLlm:
    """The summarizer for ``spec``: its endpoint when it names one, else the local model at ``path_or_id``."""
    context = spec.options.get("context_tokens")
    if spec.endpoint:
        return OpenAiChatLlm(spec.endpoint, spec.ref, context_tokens=int(context or 8192))
    return LocalChatLlm(path_or_id, device=device, context_tokens=int(context or 4096), revision=spec.revision)
