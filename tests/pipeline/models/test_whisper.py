"""Batched Whisper on the tiny checkpoint: windows cut in pauses, absolute timestamps, one batched decode."""
from __future__ import annotations

import numpy as np
import pytest
import whisper
from whisper.tokenizer import get_tokenizer

from pipeline.models.whisper import Transcript, TranscriptSegment, cut_windows, parse_segments

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


def test_parse_segments_reads_timestamp_pairs():
    tok = get_tokenizer(True, num_languages=99, language="en", task="transcribe")

    def ts(seconds: float) -> int:
        return tok.timestamp_begin + round(seconds / 0.02)

    tokens = [ts(0.0), *tok.encode(" hello there"), ts(2.0), ts(2.0), *tok.encode(" second"), ts(5.0),
              *tok.encode(" unfinished")]
    assert parse_segments(tokens, tok, 30.0, 58.0) == [
        TranscriptSegment(30.0, 32.0, "hello there"),
        TranscriptSegment(32.0, 35.0, "second"),
        TranscriptSegment(35.0, 58.0, "unfinished"),  # no closing timestamp: runs to the window's end
    ]
    assert parse_segments(tok.encode(" no timestamps"), tok, 30.0, 58.0) == [
        TranscriptSegment(30.0, 58.0, "no timestamps")
    ]
    assert parse_segments([ts(29.0), *tok.encode(" late"), ts(29.9)], tok, 60.0, 70.0) == [
        TranscriptSegment(70.0, 70.0, "late")  # clipped to a short last window
    ]
    assert parse_segments([ts(1.0), ts(2.0)], tok, 0.0, 30.0) == []


def test_transcribe_gives_absolute_monotonic_segments(whisper_asr, speech_like, decode_calls):
    transcript = whisper_asr.transcribe(speech_like)
    assert isinstance(transcript, Transcript) and transcript.language
    segments = transcript.segments
    assert segments and all(s.text for s in segments)
    assert all(0 <= s.start_s <= s.end_s <= 70.0 for s in segments)
    assert all(a.start_s <= b.start_s and a.end_s <= b.end_s for a, b in zip(segments, segments[1:]))
    assert max(s.end_s for s in segments) > 30.0  # later windows are placed at their offsets
    assert decode_calls == [len(cut_windows(speech_like))]


def test_transcribe_many_decodes_all_windows_in_one_batch(whisper_asr, speech_like, decode_calls):
    shorter = speech_like[: 40 * SR]
    transcripts = whisper_asr.transcribe_many([speech_like, shorter, speech_like])
    n_windows = 2 * len(cut_windows(speech_like)) + len(cut_windows(shorter))
    # DecodingOptions holds one language: one batch per detected language, all windows decoded once.
    assert len(decode_calls) == len({t.language for t in transcripts})
    assert sum(decode_calls) == n_windows
    assert transcripts[0] == transcripts[2]
    assert max(s.end_s for s in transcripts[1].segments) <= 40.0


def test_identical_audios_share_one_decode(whisper_asr, speech_like, decode_calls):
    whisper_asr.transcribe_many([speech_like, speech_like])
    assert decode_calls == [2 * len(cut_windows(speech_like))]


def test_micro_batches_follow_batch_size(tiny_path, speech_like, decode_calls):
    from pipeline.models.whisper import WhisperAsr

    asr = WhisperAsr(tiny_path("whisper"), batch_size=2, max_new_tokens=4)
    asr.transcribe_many([speech_like, speech_like])
    assert decode_calls == [2, 2, 2]


def test_empty_audio_gives_an_empty_transcript(whisper_asr, decode_calls):
    assert whisper_asr.transcribe_many([np.zeros(0, np.float32)]) == [Transcript(None, [])]
    assert decode_calls == []
