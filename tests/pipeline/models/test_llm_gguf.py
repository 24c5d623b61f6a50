"""The real SmolLM2-135M-Instruct (GGUF, Q4_1) as the summarizer: loading, its chat template, a summary.

A model this small wrote prose, echoed the prompt or ran out of tokens inside its JSON before; decoding
under the answer schema is what makes its summary of a plain talk come back whole and on topic.
"""
from __future__ import annotations

import pytest
import torch

from pipeline.config import ModelSpec
from pipeline.models.llm import LocalChatLlm, load_llm
from pipeline.summarize import answer_schema, summarize_video

# About a minute of someone explaining one thing, as Whisper would segment it, and what BLIP-2 might say
# of the keyframes: the same shot captioned three times over, then one caption a shot.
TALK = [
    (0.0, 6.5, "Hi everyone, today I want to show you how to grow tomatoes on a small balcony."),
    (6.5, 15.0, "First, pick a large pot with drainage holes and fill it with good potting soil."),
    (15.0, 27.0, "Plant the seedling deep, up to its first leaves, because tomatoes grow roots along the stem."),
    (27.0, 40.0, "Water the plant every morning, and give it tomato fertilizer once a week."),
    (40.0, 52.0, "Tie the stem to a stake as it grows, so the fruit does not break it."),
    (52.0, 60.0, "In about two months you can pick your first ripe tomatoes. Thanks for watching!"),
]
CAPTIONS = [
    (0.0, "a woman standing on a balcony"), (5.0, "a woman standing on a balcony"),
    (9.0, "a woman standing on the balcony"), (14.0, "a pot of soil on a table"),
    (20.0, "a person planting a small plant in a pot"), (33.0, "a watering can"),
    (45.0, "a tomato plant tied to a stick"), (50.0, "a tomato plant tied to a stick"),
    (57.0, "red tomatoes on a plant"),
]
DURATION_S = 61.0
MAX_NEW_TOKENS = 384


@pytest.fixture(scope="module")
def smollm(real_weights):
    path = str(real_weights("smollm2-135m-instruct") / "SmolLM2-135M-Instruct.Q4_1.gguf")
    spec = ModelSpec(path, max_new_tokens=MAX_NEW_TOKENS, options={"context_tokens": 2048})
    # A 135M model's decode steps are too small to gain from a second thread, and wait on it whenever the
    # other core is busy (measured on 2 shared cores: 3.5 s for the summary on one thread, 18-22 s on two).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_llm(spec, path, "cpu")
    torch.set_num_threads(threads)


def test_gguf_loads_with_the_models_own_chat_template(smollm):
    assert isinstance(smollm, LocalChatLlm) and smollm.context_tokens == 2048
    # SmolLM2's template (from the GGUF's metadata) supplies its own system prompt when none is given.
    prompt = smollm.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hello"}], add_generation_prompt=True, tokenize=False,
    )
    assert prompt == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"
    )
    assert smollm.tokenizer.convert_ids_to_tokens(smollm.eos_ids) == ["<|im_end|>"]


def test_real_model_summarizes_a_talk(smollm):
    result = summarize_video(
        smollm, duration_s=DURATION_S, captions=CAPTIONS, segments=TALK, max_new_tokens=MAX_NEW_TOKENS,
    )
    assert result.status == "ok" and result.raw is None and result.chunks == 1
    assert result.title and result.summary
    assert "tomato" in (result.title + " " + result.summary).lower()  # about the talk, not the prompt
    bounds = answer_schema(DURATION_S, MAX_NEW_TOKENS)["properties"]
    assert len(result.title) <= bounds["title"]["maxLength"] and len(result.summary) <= bounds["summary"]["maxLength"]
    assert all(0 <= item["timestamp_s"] <= DURATION_S and item["text"] for item in result.timeline)
