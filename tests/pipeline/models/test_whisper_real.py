"""WhisperAsr on real base weights, where the end-to-end run does not reach: a token budget far too small."""
from __future__ import annotations

import logging

from pipeline.media.speech import word_error_rate
from pipeline.models.store import resolve
from pipeline.models.whisper import WhisperAsr


def test_a_small_token_budget_splits_windows_instead_of_losing_words(talk, real_weights, model_cache, caplog):
    # 24 new tokens is the tiny profile's budget: kept by mistake with a real checkpoint, it used to lose 57%
    # of the words of this kind of talk without a word of warning.
    audio, utterances = talk
    asr = WhisperAsr(resolve(str(real_weights("whisper-base")), "whisper", model_cache), max_new_tokens=24)
    with caplog.at_level(logging.WARNING):
        transcript = asr.transcribe(audio)
    reference = " ".join(u.text for u in utterances)
    assert word_error_rate(reference, " ".join(s.text for s in transcript.segments)) <= 0.2
    assert asr.counts["split"] >= 2
    # Whatever was kept although it still failed was said so, window by window.
    assert caplog.text.count("kept although its decode") == asr.counts["kept_failing"]
