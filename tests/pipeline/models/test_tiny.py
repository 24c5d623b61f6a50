"""The tiny builders write real-format artefacts that the real loaders open."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.models.tiny import build_tiny

MAX_BYTES = 20 * 1024**2


def _size(path: str) -> int:
    p = Path(path)
    return p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def test_whisper_checkpoint_loads_with_openai_whisper(tiny_path):
    import whisper

    path = tiny_path("whisper")
    assert path.endswith(".pt") and _size(path) < MAX_BYTES
    model = whisper.load_model(path, device="cpu")
    dims = model.dims
    assert (dims.n_mels, dims.n_vocab, dims.n_audio_ctx, dims.n_text_ctx) == (80, 51865, 1500, 448)
    assert model.is_multilingual


def _same(first: dict, second: dict) -> bool:
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_builds_are_deterministic(tmp_path):
    from safetensors.torch import load_file

    whisper = [torch.load(build_tiny("whisper", tmp_path / n), weights_only=True)["model_state_dict"] for n in "ab"]
    llm = [load_file(build_tiny("llm", tmp_path / n) / "model.safetensors") for n in "cd"]
    assert _same(*whisper) and _same(*llm)


@pytest.mark.parametrize("role", ["blip2", "clip", "llm"])
def test_tokenizers_are_the_same_on_every_build(tmp_path, role):
    # Two caches of the same tiny model must tokenise alike, or a search embeds queries unlike the run did.
    first, second = (build_tiny(role, tmp_path / n) / "tokenizer.json" for n in "ab")
    assert first.read_bytes() == second.read_bytes()


def test_blip2_loads_with_matching_image_tokens(tiny_path):
    from transformers import AutoProcessor, Blip2ForConditionalGeneration

    path = tiny_path("blip2")
    assert _size(path) < MAX_BYTES
    model = Blip2ForConditionalGeneration.from_pretrained(path)
    processor = AutoProcessor.from_pretrained(path)
    assert processor.num_query_tokens == model.config.num_query_tokens
    assert processor.tokenizer.convert_tokens_to_ids(processor.image_token.content) == model.config.image_token_index
    assert len(processor.tokenizer) <= model.config.text_config.vocab_size


def test_clip_loads(tiny_path):
    from transformers import AutoProcessor, CLIPModel

    path = tiny_path("clip")
    assert _size(path) < MAX_BYTES
    model = CLIPModel.from_pretrained(path)
    processor = AutoProcessor.from_pretrained(path)
    ids = processor(text=["a cat on a sofa!"], return_tensors="pt")["input_ids"][0].tolist()
    assert ids[0] == processor.tokenizer.bos_token_id and ids[-1] == model.config.text_config.eos_token_id
    assert processor.tokenizer.unk_token_id not in ids[1:-1]  # the trained vocabulary covers plain text


def test_llm_loads_with_a_chat_template(tiny_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tiny_path("llm")
    assert _size(path) < MAX_BYTES
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                           tokenize=False)
    assert prompt.endswith("<|im_start|>assistant\n")
    assert model.config.model_type == "qwen2" and len(tokenizer) <= model.config.vocab_size


def test_unknown_role_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no tiny model"):
        build_tiny("sam", tmp_path)
