"""Times for text Whisper decoded without timestamps: word alignment, sentences, and speech onsets.

Decoding with timestamp tokens costs the small Whisper models accuracy (on the benchmark talk, base's WER
rose from 0.05 to 0.15), so the text is decoded without them and placed afterwards, the way
``word_timestamps=True`` and WhisperX do it: one teacher-forced decoder pass gives the cross-attention of the
alignment heads, and dynamic time warping over it gives each word's start and end (``whisper.timing``).
Words are grouped into sentences, and a sentence time that falls in a pause is moved to the speech the
voice activity detector found.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import torch
from whisper.audio import CHUNK_LENGTH
from whisper.timing import find_alignment, merge_punctuations

log = logging.getLogger(__name__)

SENTENCE_END = (".", "?", "!", "。", "？", "！", "…")
PREPENDED = "\"'“¿([{-"  # whisper.transcribe's defaults for attaching punctuation to words
APPENDED = "\"'.。,，!！?？:：”)]}、"


@dataclass(frozen=True)
class TranscriptSegment:
    start_s: float
    end_s: float
    text: str


@dataclass(frozen=True)
class Word:
    text: str  # with its leading space, as the tokenizer decodes it
    start_s: float
    end_s: float


class _DecoderOnly:
    """What ``find_alignment`` needs of a model, running the decoder on encoder output that is already there
    (the batch was encoded for decoding: encoding it again would double the cost)."""

    def __init__(self, model):
        self._model = model
        self.device, self.dims, self.decoder = model.device, model.dims, model.decoder
        self.alignment_heads = model.alignment_heads

    def __call__(self, features: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self._model.decoder(tokens, features)


def align_words(model, tokenizer, features: torch.Tensor, tokens: list[int], duration_s: float) -> list[Word]:
    """Words of ``tokens`` (text tokens of one window) with times in seconds from the window's start.

    ``features`` is the window's encoder output ``[n_audio_ctx, n_audio_state]``; ``duration_s`` how much of
    the window is audio rather than padding.
    """
    text_tokens = [t for t in tokens if t < tokenizer.eot]
    if not text_tokens:
        return []
    frames = int(min(duration_s, CHUNK_LENGTH) * model.dims.n_audio_ctx / CHUNK_LENGTH * 2)  # mel frames
    timings = find_alignment(_DecoderOnly(model), tokenizer, text_tokens, features, max(frames, 2))
    merge_punctuations(timings, PREPENDED, APPENDED)
    return [Word(t.word, float(t.start), float(t.end)) for t in timings if t.word]


def sentences(words: list[Word], to_audio_time: Callable[[float], float]) -> list[TranscriptSegment]:
    """Consecutive words grouped into sentences (ending at . ? ! and the like), their times in the window
    turned into times in the audio by ``to_audio_time``."""
    segments, current = [], []
    for i, word in enumerate(words):
        current.append(word)
        if word.text.rstrip().endswith(SENTENCE_END) or i == len(words) - 1:
            text = "".join(w.text for w in current).strip()
            start = to_audio_time(current[0].start_s)
            end = max(to_audio_time(current[-1].end_s), start)
            if text:
                segments.append(TranscriptSegment(round(start, 3), round(end, 3), text))
            current = []
    return segments


def pin_to_speech(segment: TranscriptSegment, regions_s: list[tuple[float, float]]) -> TranscriptSegment:
    """``segment`` with a start that falls in a pause moved to the next onset of speech, and an end that
    falls in a pause moved back to the last speech before it (alignment often runs into pauses)."""
    start, end = segment.start_s, segment.end_s
    for s, e in regions_s:
        if e > start:
            if start < s < end:
                start = s
            break
    for s, e in reversed(regions_s):
        if s < end:
            if start < e < end:
                end = e
            break
    return TranscriptSegment(round(start, 3), round(end, 3), segment.text)
