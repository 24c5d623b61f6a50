"""Offline random-weight builds of the real architectures, saved in the real formats.

The ``tiny`` profile uses these so that tests and the demo run the very loading and inference code of the
real checkpoints on a machine without a model hub. The weights are random (seeded, so a cache rebuilt
anywhere holds the same model); what the models say is noise, and nothing pretends otherwise.
"""
from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SEED = 1234
# Bumped whenever a build changes what it writes, so caches of older builds are not taken for this one.
BUILD = "v2"
FAMILIES = ("whisper", "blip2", "clip", "llm")

# Small, but covering every character class a tokenizer meets, so that trained vocabularies need no
# unknown token for ordinary text.
_CORPUS = [
    "a photo of a cat sitting on a red sofa in the living room",
    "the quick brown fox jumps over the lazy dog near the river",
    "a man speaking to the camera in a bright kitchen",
    "a woman walking a dog along a beach at sunset",
    "a title card with white text on a black background",
    "cars driving on a highway at night with headlights on",
    "two people playing football on a green field",
    "close up of hands typing on a laptop keyboard",
    'the summary of the video is {"title": "a video", "summary": "it shows things", "timeline": []}',
    "timestamp 00:12 caption said speech music silence applause",
    "0 1 2 3 4 5 6 7 8 9 10 20 30 42 100 2024",
    "! \" # $ % & ' ( ) * + , - . / : ; < = > ? @ [ \\ ] ^ _ ` { | } ~",
    "A B C D E F G H I J K L M N O P Q R S T U V W X Y Z",
    "a b c d e f g h i j k l m n o p q r s t u v w x y z",
]


def build_tiny(family: str, directory: Path) -> Path:
    """Build the tiny model of ``family`` into ``directory``; returns what a loader takes (file or folder)."""
    builders = {"whisper": _whisper, "blip2": _blip2, "clip": _clip, "llm": _llm}
    if family not in builders:
        raise ValueError(f"no tiny model for {family!r}; there are {', '.join(FAMILIES)}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(SEED)
    return builders[family](directory)


def _bpe(specials: list[str], end_of_word: str = "", lowercase: bool = False) -> tuple[dict[str, int], list]:
    """A byte-level BPE vocabulary and merges made from the corpus's words, the same on every machine.

    ``tokenizers``' trainer orders equal-count merges and even the alphabet by hash-map iteration, so two
    builds of ``tiny:clip`` would tokenise text differently: a search would then embed a query unlike the
    run did. Here the alphabet is the 256 byte symbols in byte order and each corpus word (with its
    leading-space form, or its end-of-word suffix for CLIP) is merged left to right, in sorted word order.
    """
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    alphabet = [bytes_to_unicode()[b] for b in range(256)]
    tokens = list(dict.fromkeys([*specials, *alphabet, *([c + end_of_word for c in alphabet] if end_of_word else [])]))
    known, merges = set(tokens), []
    words = sorted({w.lower() if lowercase else w for line in _CORPUS for w in line.split() if w.isalpha()})
    for word in words:
        for form in [word] if end_of_word else [word, "\u0120" + word]:  # U+0120 is byte-level BPE's space
            symbols = list(form)
            symbols[-1] += end_of_word
            while len(symbols) > 1:
                merged = symbols[0] + symbols[1]
                if merged not in known:
                    merges.append((symbols[0], symbols[1]))
                    tokens.append(merged)
                    known.add(merged)
                symbols = [merged, *symbols[2:]]
    return {t: i for i, t in enumerate(tokens)}, merges


def _whisper(directory: Path) -> Path:
    from whisper.model import ModelDimensions, Whisper

    # n_mels, n_audio_ctx and n_text_ctx are fixed by the mel front end and the decoding code;
    # n_vocab=51865 makes whisper pick its shipped multilingual tokenizer.
    dims = ModelDimensions(
        n_mels=80, n_audio_ctx=1500, n_audio_state=64, n_audio_head=2, n_audio_layer=1,
        n_vocab=51865, n_text_ctx=448, n_text_state=64, n_text_head=2, n_text_layer=1,
    )
    model = Whisper(dims)
    # whisper leaves this one as torch.empty (the checkpoint fills it): uninitialised memory, not seeded noise.
    torch.nn.init.normal_(model.decoder.positional_embedding, std=0.01)
    path = directory / "tiny-whisper.pt"
    torch.save({"dims": asdict(dims), "model_state_dict": model.state_dict()}, path)
    return path


def _blip2(directory: Path) -> Path:
    from transformers import (
        Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, Blip2QFormerConfig, Blip2VisionConfig,
        GPT2Tokenizer, OPTConfig,
    )
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    # OPT's special tokens, plus the image placeholder the processor and generate() both use.
    vocab, merges = _bpe(["</s>", "<pad>"])
    tokenizer = GPT2Tokenizer(
        vocab=vocab, merges=merges, bos_token="</s>", eos_token="</s>", unk_token="</s>", pad_token="<pad>",
    )
    processor = Blip2Processor(
        BlipImageProcessorPil(size={"height": 32, "width": 32}), tokenizer, num_query_tokens=4,
    )
    image_token_id = tokenizer.convert_tokens_to_ids(processor.image_token.content)
    text = OPTConfig(
        vocab_size=len(tokenizer), hidden_size=32, word_embed_proj_dim=32, ffn_dim=64, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=128, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    config = Blip2Config(
        vision_config=Blip2VisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32,
            patch_size=8, initializer_range=0.02,  # the default (1e-10) would make every image look alike
        ).to_dict(),
        qformer_config=Blip2QFormerConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=64,
            max_position_embeddings=32, cross_attention_frequency=1,
        ).to_dict(),
        text_config=text.to_dict(),
        num_query_tokens=processor.num_query_tokens,
        image_token_index=image_token_id,
    )
    Blip2ForConditionalGeneration(config).save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def _clip(directory: Path) -> Path:
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor, CLIPTokenizer
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    vocab, merges = _bpe(["<|startoftext|>", "<|endoftext|>"], end_of_word="</w>", lowercase=True)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=32)
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
            num_attention_heads=2, max_position_embeddings=32, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32,
            patch_size=8,
        ),
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(directory)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(directory)
    return directory


# Qwen2's ChatML template, so that the tiny model exercises the same prompt path as the real instruct models.
_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _llm(directory: Path) -> Path:
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2Tokenizer

    vocab, merges = _bpe(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tokenizer = Qwen2Tokenizer(
        vocab=vocab, merges=merges, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        extra_special_tokens=["<|im_start|>"],
    )
    tokenizer.chat_template = _CHAT_TEMPLATE
    tokenizer.model_max_length = 1024
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    Qwen2ForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
