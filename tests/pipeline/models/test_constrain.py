"""Decoding under the answer schema with the tiny LLM, pushed by an adversary to write the longest answer."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from pipeline.models.llm import LocalChatLlm
from pipeline.summarize import answer_schema

MESSAGES = [{"role": "system", "content": "Answer in JSON."}, {"role": "user", "content": "Say hi."}]


class LongestAnswer(LogitsProcessor):
    """Prefers what makes an answer cost the most tokens: one ASCII character a token, and never closing a
    string, an array or the answer while anything else is allowed. (What the grammar forces, such as the
    keys, llguidance lets through in its canonical tokens only.)"""

    def __init__(self, tokenizer, width: int):
        ids = range(len(tokenizer))
        pieces = [tokenizer.convert_tokens_to_string([t]) for t in tokenizer.convert_ids_to_tokens(ids)]
        # A "0" would end a number, and so would a comma: other digits grow it to the most digits allowed.
        bias = [
            -1000.0 if not p.isascii() else -50.0 * (p in '"]}0') + (p in "123456789") - 100.0 * (len(p) - 1)
            for p in pieces
        ]
        self.bias = torch.tensor(bias + [-1000.0] * (width - len(bias)))
        self.bias[tokenizer.eos_token_id] = -1000.0

    def __call__(self, input_ids, scores):
        return torch.zeros_like(scores) + self.bias


@pytest.fixture(scope="module")
def tiny_llm(model_cache) -> LocalChatLlm:
    from pipeline.models.store import resolve

    return LocalChatLlm(resolve("tiny:llm", "llm", model_cache))


@pytest.mark.parametrize(("duration_s", "max_new_tokens"), [(9.0, 64), (70.0, 128), (3600.0, 256)])
def test_the_longest_answer_still_closes_within_the_budget(tiny_llm, duration_s, max_new_tokens):
    schema = answer_schema(duration_s, max_new_tokens)
    constrained = tiny_llm.schema_processor([schema])
    width = tiny_llm.model.get_output_embeddings().weight.shape[0]
    inputs = tiny_llm.tokenizer.apply_chat_template(
        MESSAGES, add_generation_prompt=True, return_tensors="pt", return_dict=True,
    )
    with torch.inference_mode():
        out = tiny_llm.model.generate(
            **inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tiny_llm.pad_id,
            logits_processor=LogitsProcessorList([LongestAnswer(tiny_llm.tokenizer, width), constrained]),
        )
    new = out[0, inputs["input_ids"].shape[1]:].tolist()
    assert new[-1] == tiny_llm.tokenizer.eos_token_id  # ended by the grammar, not by the budget
    value = json.loads(tiny_llm.tokenizer.decode(new, skip_special_tokens=True))
    props = schema["properties"]
    # Every string filled to its bound and every item slot taken: the worst case, and it fitted.
    assert len(value["title"]) == props["title"]["maxLength"]
    assert len(value["summary"]) == props["summary"]["maxLength"]
    assert len(value["timeline"]) == props["timeline"]["maxItems"]
    text_bound = props["timeline"]["items"]["properties"]["text"]["maxLength"]
    assert all(len(item["text"]) == text_bound and 0 <= item["timestamp_s"] <= duration_s for item in value["timeline"])
    assert all(len(str(item["timestamp_s"])) == len(str(int(duration_s))) for item in value["timeline"])


def test_a_schema_the_grammar_compiler_refuses_is_an_error(tiny_llm):
    with pytest.raises(ValueError, match="not usable for constrained decoding"):
        tiny_llm.schema_processor([{"type": "string", "pattern": "(?=lookahead)"}])
