"""Batched Whisper on the tiny checkpoint: speech windows cut in pauses, batched decodes, fallbacks, timing.

The tiny model's weights are random: these tests check the mechanics (which windows are decoded, how
often, in what batches, where the text is placed); tests/pipeline/models/test_whisper_real.py checks words.
"""
from __future__ import annotations

import numpy as np
import pytest
import whisper

from pipeline.media.speech import music
from pipeline.models.whisper import Transcript, WhisperAsr, _Window, cut_windows, plan_windows
from pipeline.models.whisper_timing import TranscriptSegment, Word, pin_to_speech, sentences

SR = 16000


@pytest.fixture
def decode_calls(monkeypatch):
    """Batch sizes of the calls to the real ``whisper.decode``."""
    calls: list[int] = []
    real = whisper.decode

    def counting(model, mel, options):
        calls.append(mel.shape[0])
        return real(model, mel, options)

    monkeypatch.setattr(whisper, "decode", counting)
    return calls


def test_cut_prefers_the_pause(speech_like):
    windows = cut_windows(speech_like)
    assert windows[0][0] == 0 and windows[-1][1] == len(speech_like)
    assert all(a[1] == b[0] for a, b in zip(windows, windows[1:]))  # contiguous, nothing lost
    assert all(0 < e - s <= 30 * SR for s, e in windows)
    # The 1.5 s pause at 26-27.5 s wins over the short gaps nearer the 30 s mark, and is cut in its middle.
    assert abs(windows[0][1] / SR - 26.75) <= 0.1


def test_cut_without_pauses_stays_within_30_s():
    rng = np.random.default_rng(1)
    noise = rng.standard_normal(65 * SR).astype(np.float32)
    windows = cut_windows(noise)
    assert len(windows) == 3 and all(e - s <= 30 * SR for s, e in windows)
    assert cut_windows(noise[: 10 * SR]) == [(0, 10 * SR)]
    assert cut_windows(np.zeros(0, np.float32)) == []


def test_windows_pack_speech_and_leave_out_pauses():
    audio = np.zeros(80 * SR, np.float32)
    regions = [(int(a * SR), int(b * SR)) for a, b in [(1, 5), (6, 12), (13.5, 30), (30.1, 34), (40, 75)]]
    windows = plan_windows(regions, audio)
    pieces = [p for w in windows for p in w]
    assert all(0 < sum(e - s for s, e in w) <= 30 * SR for w in windows)
    assert all(a[1] <= b[0] for a, b in zip(pieces, pieces[1:]))  # in order, never overlapping
    for s, e in regions:  # every sample of speech is in a piece
        assert sum(max(0, min(e, pe) - max(s, ps)) for ps, pe in pieces) == e - s
    # Pads of 0.2 s, or up to the middle of a shorter pause; the pauses themselves are left out.
    assert pieces[:4] == [(int(0.8 * SR), int(5.2 * SR)), (int(5.8 * SR), int(12.2 * SR)),
                          (int(13.3 * SR), int(30.05 * SR)), (int(30.05 * SR), int(34.2 * SR))]
    # 4.4 + 6.4 + 16.75 s fit in one window; the next piece would not.
    assert windows[0] == tuple(pieces[:3]) and windows[1][0] == pieces[3]
    # The 35 s region is cut at its quietest places into pieces that each fit.
    assert len([w for w in windows if w[0][0] >= 39 * SR]) == 2
    assert plan_windows([], audio) == []


def test_window_times_map_back_through_the_left_out_pauses():
    w = _Window(0, ((16000, 48000), (80000, 96000)))  # 1-3 s, then 5-6 s
    assert w.samples == 48000 and len(w.clip(np.arange(100000, dtype=np.float32))) == 48000
    assert [w.to_audio_time(t) for t in (0.0, 1.5, 2.0, 2.5, 9.0)] == [1.0, 2.5, 5.0, 5.5, 6.0]


def test_sentences_follow_punctuation_and_pins_follow_speech():
    words = [Word(" Hello", 0.2, 0.6), Word(" there.", 0.6, 1.0), Word(" How", 2.0, 2.3), Word(" are", 2.3, 2.5),
             Word(" you?", 2.5, 2.9), Word(" Fine", 4.0, 4.4)]
    assert sentences(words, lambda t: 10.0 + t) == [
        TranscriptSegment(10.2, 11.0, "Hello there."), TranscriptSegment(12.0, 12.9, "How are you?"),
        TranscriptSegment(14.0, 14.4, "Fine"),
    ]
    speech = [(10.5, 11.2), (12.4, 12.8)]
    assert pin_to_speech(TranscriptSegment(10.2, 11.0, "a"), speech) == TranscriptSegment(10.5, 11.0, "a")
    assert pin_to_speech(TranscriptSegment(11.5, 13.0, "b"), speech) == TranscriptSegment(12.4, 12.8, "b")
    assert pin_to_speech(TranscriptSegment(10.7, 10.9, "c"), speech) == TranscriptSegment(10.7, 10.9, "c")


def test_transcribe_places_text_over_the_speech(whisper_asr, talk, decode_calls):
    audio, utterances = talk
    transcript = whisper_asr.transcribe(audio)
    assert isinstance(transcript, Transcript) and transcript.language
    segments = transcript.segments
    assert segments and all(s.text for s in segments)
    assert all(0 <= s.start_s <= s.end_s <= len(audio) / SR for s in segments)
    assert all(a.start_s <= b.start_s for a, b in zip(segments, segments[1:]))
    speech = whisper_asr.vad.regions(audio)
    assert decode_calls[0] == len(plan_windows(speech, audio))  # one batch: every window at once
    # Starts lie on speech, not in the pauses the windows were padded with.
    assert all(any(s - 0.05 <= seg.start_s <= e for s, e in [(a / SR, b / SR) for a, b in speech]) for seg in segments)


def test_transcribe_many_decodes_all_windows_in_one_batch(whisper_asr, talk, decode_calls):
    audio, _ = talk
    shorter = audio[: 20 * SR]
    transcripts = whisper_asr.transcribe_many([audio, shorter, audio])
    n_windows = sum(len(plan_windows(whisper_asr.vad.regions(a), a)) for a in (audio, shorter, audio))
    # DecodingOptions holds one language: one batch per detected language holds every window. (The tiny
    # model's decodes all run out of tokens, so halves of the longer windows follow in later batches.)
    assert len({t.language for t in transcripts}) == 1 and decode_calls[0] == n_windows
    assert transcripts[0] == transcripts[2]
    assert max(s.end_s for s in transcripts[1].segments) <= 20.0


def test_micro_batches_follow_batch_size(tiny_path, talk, decode_calls):
    audio, _ = talk
    asr = WhisperAsr(tiny_path("whisper"), batch_size=2, max_new_tokens=4, temperatures=(0.0,))
    n = len(plan_windows(asr.vad.regions(audio), audio))
    asr.transcribe_many([audio, audio])
    # Every decode runs out of its 4 tokens, so windows of 8 s and more are split and decoded again.
    assert decode_calls[: n] == [2] * n and all(size <= 2 for size in decode_calls)
    assert asr.counts["split"] > 0 and asr.counts["kept_failing"] > 0


def test_failed_decodes_fall_back_to_higher_temperatures(tiny_path, talk, decode_calls, caplog):
    audio, _ = talk
    asr = WhisperAsr(tiny_path("whisper"), batch_size=8, max_new_tokens=24, temperatures=(0.0, 0.5, 1.0))
    clip = audio[: 7 * SR]  # too short to split
    first = asr.transcribe(clip)
    # The tiny model repeats one word until its budget runs out: the window is decoded at every
    # temperature, and what the last one gives is kept, with a warning rather than silently.
    assert decode_calls == [1, 1, 1] and asr.counts["retried"] == 2
    assert first.segments and "kept although its decode" in caplog.text
    assert asr.transcribe(clip) == first  # sampled retries are seeded: reruns agree


def test_silence_and_music_reach_no_decoder(whisper_asr, decode_calls):
    silent, tune = np.zeros(20 * SR, np.float32), music(20.0)
    assert whisper_asr.transcribe_many([silent, tune, np.zeros(0, np.float32)]) == [Transcript(None, [])] * 3
    assert decode_calls == []
