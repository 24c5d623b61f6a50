"""Tiny models built once per session into the shared model cache, and their loaded wrappers."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.models.store import resolve

SR = 16000


@pytest.fixture(scope="session")
def tiny_path(model_cache):
    """``tiny_path(role)``: the built tiny model for ``role`` (whisper, blip2, clip, llm)."""
    return lambda role: resolve(f"tiny:{role}", role, model_cache)


@pytest.fixture(scope="session")
def whisper_asr(tiny_path):
    from pipeline.models.whisper import WhisperAsr

    return WhisperAsr(tiny_path("whisper"), batch_size=8, max_new_tokens=24, temperatures=(0.0,))


@pytest.fixture(scope="session")
def clip_encoder(tiny_path):
    from pipeline.models.clip import ClipEncoder

    return ClipEncoder(tiny_path("clip"), batch_size=2)


@pytest.fixture(scope="session")
def speech_like() -> np.ndarray:
    """70 s of tone bursts (a different pitch every 2 s) with 0.5 s gaps, and a 1.5 s pause at 26-27.5 s."""
    rng = np.random.default_rng(0)
    t = np.arange(70 * SR) / SR
    pitch = 200 + 50 * (t // 2.5 % 7)
    audio = 0.3 * np.sin(2 * np.pi * pitch * t) + 0.01 * rng.standard_normal(t.size)
    audio[(t % 2.5) >= 2.0] = 0.0
    audio[(t >= 26.0) & (t < 27.5)] = 0.0
    return audio.astype(np.float32)
