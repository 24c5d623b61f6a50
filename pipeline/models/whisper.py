"""Whisper speech recognition over batched 30 s windows.

``whisper.transcribe`` walks one file window after window, each decode waiting for the previous one to say
where to seek. Here every file is cut up front at quiet places, and the windows of all files in a batch go
through ``whisper.decode`` together, which is what keeps a GPU busy. The price is that a window never
restarts at the last timestamp the model emitted; cutting in silence keeps that price low.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import whisper
from whisper.audio import CHUNK_LENGTH, N_FRAMES, N_SAMPLES, SAMPLE_RATE
from whisper.tokenizer import get_tokenizer

log = logging.getLogger(__name__)

SEARCH_S = 5.0  # how far back from the 30 s mark a quieter cut point is looked for
FRAME_S = 0.1  # resolution of the energy profile used to find it
NO_SPEECH_THRESHOLD = 0.6
LOGPROB_THRESHOLD = -1.0


@dataclass(frozen=True)
class TranscriptSegment:
    start_s: float
    end_s: float
    text: str


@dataclass(frozen=True)
class Transcript:
    language: str | None
    segments: list[TranscriptSegment]


def cut_windows(
    audio: np.ndarray, sample_rate: int = SAMPLE_RATE, max_s: float = CHUNK_LENGTH, search_s: float = SEARCH_S,
    frame_s: float = FRAME_S,
) -> list[tuple[int, int]]:
    """``[start, end)`` sample ranges of at most ``max_s`` covering ``audio``, cut where it is quietest.

    Each cut lies in the last ``search_s`` before the window would reach ``max_s``: among the runs of
    ``frame_s`` frames whose RMS energy is (near) the lowest there, the longest (the latest of equals), cut
    in its middle. A real pause beats a short gap, and the middle of a pause beats its edge, where a word
    may begin.
    """
    max_len, search_len, frame = int(max_s * sample_rate), int(search_s * sample_rate), int(frame_s * sample_rate)
    windows, start = [], 0
    while len(audio) - start > max_len:
        region_start = start + max_len - search_len
        rms = _frame_rms(audio[region_start:start + max_len], frame)
        quiet = rms <= rms.min() * 1.5 + 1e-4  # the floor makes digital silence and faint hiss equally quiet
        first, last = max(_runs(quiet), key=lambda run: (run[1] - run[0], run[0]))
        end = region_start + (first + last + 1) * frame // 2
        windows.append((start, end))
        start = end
    if start < len(audio):
        windows.append((start, len(audio)))
    return windows


def parse_segments(
    tokens: list[int], tokenizer, start_s: float, end_s: float, time_precision: float = 0.02,
) -> list[TranscriptSegment]:
    """Segments between timestamp tokens (read as ``whisper.transcribe`` reads them), in absolute seconds.

    ``start_s``/``end_s`` place the window in the audio. Text after the last timestamp runs to the window's
    end (no later seek will pick it up), and a window without timestamps becomes one segment spanning it.
    """
    spans, text, seg_start = [], [], 0.0
    for token in tokens:
        if token >= tokenizer.timestamp_begin:
            t = (token - tokenizer.timestamp_begin) * time_precision
            if text:
                spans.append((seg_start, t, text))
                text = []
            seg_start = t
        elif token < tokenizer.eot:
            text.append(token)
    if text:
        spans.append((seg_start, end_s - start_s, text))
    segments = []
    for s, e, toks in spans:
        words = tokenizer.decode(toks).strip()
        s, e = min(start_s + s, end_s), min(start_s + e, end_s)
        if words:
            segments.append(TranscriptSegment(round(s, 3), round(max(s, e), 3), words))
    return segments


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """``(first, last)`` indices of each run of True in ``mask``."""
    edges = np.flatnonzero(np.diff(np.concatenate(([0], mask.astype(np.int8), [0]))))
    return [(int(a), int(b) - 1) for a, b in zip(edges[::2], edges[1::2])]


def _frame_rms(audio: np.ndarray, frame: int) -> np.ndarray:
    n = len(audio) // frame
    return np.sqrt(np.mean(np.square(audio[:n * frame].reshape(n, frame), dtype=np.float64), axis=1))


class WhisperAsr:
    def __init__(self, path_or_name: str, device: str = "cpu", batch_size: int = 8, max_new_tokens: int = 224):
        self.name = path_or_name
        self.device = device
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.model = whisper.load_model(_checkpoint(path_or_name), device=device).eval()
        self.n_mels = self.model.dims.n_mels
        # Timestamp tokens count steps of the encoder output: 30 s over n_audio_ctx positions.
        self.time_precision = CHUNK_LENGTH / self.model.dims.n_audio_ctx

    def transcribe(self, audio: np.ndarray) -> Transcript:
        return self.transcribe_many([audio])[0]

    def transcribe_many(self, audios: list[np.ndarray]) -> list[Transcript]:
        """Transcripts of 16 kHz mono float32 ``audios``; all their windows are decoded as one batch."""
        audios = [np.asarray(a, dtype=np.float32) for a in audios]
        cuts = [cut_windows(a) for a in audios]
        windows = [(i, s, e) for i, c in enumerate(cuts) for s, e in c]
        languages = self._languages(audios, cuts)
        segments: list[list[TranscriptSegment]] = [[] for _ in audios]
        # One decode per language (DecodingOptions holds one); in practice one batch for the whole call.
        for language in dict.fromkeys(lang for lang in languages if lang):
            rows = [w for w in windows if languages[w[0]] == language]
            tokenizer = self._tokenizer(language)
            for chunk in range(0, len(rows), self.batch_size):
                batch = rows[chunk:chunk + self.batch_size]
                results = whisper.decode(self.model, self._mels(audios, batch), self._options(language))
                for (i, s, e), result in zip(batch, results):
                    # whisper.transcribe's own test for a window without speech (its default thresholds).
                    if result.no_speech_prob > NO_SPEECH_THRESHOLD and result.avg_logprob < LOGPROB_THRESHOLD:
                        continue
                    segments[i].extend(
                        parse_segments(result.tokens, tokenizer, s / SAMPLE_RATE, e / SAMPLE_RATE, self.time_precision)
                    )
        return [Transcript(languages[i], segs) for i, segs in enumerate(segments)]

    def _mels(self, audios: list[np.ndarray], windows: list[tuple[int, int, int]]) -> torch.Tensor:
        """Log-mel spectrograms ``[n, n_mels, 3000]`` of ``windows``, made per batch to bound memory."""
        mels = []
        for i, s, e in windows:
            padded = whisper.pad_or_trim(torch.from_numpy(np.array(audios[i][s:e], dtype=np.float32)), N_SAMPLES)
            mels.append(whisper.log_mel_spectrogram(padded, n_mels=self.n_mels))
        return whisper.pad_or_trim(torch.stack(mels), N_FRAMES).to(self.device)

    def _languages(self, audios: list[np.ndarray], cuts: list[list[tuple[int, int]]]) -> list[str | None]:
        """One language per audio (None without audio), detected on its loudest window: the first may be silent."""
        if not self.model.is_multilingual:
            return ["en" if c else None for c in cuts]
        loudest = [
            (i, *max(c, key=lambda w: float(_frame_rms(audios[i][w[0]:w[1]], w[1] - w[0])[0])))
            for i, c in enumerate(cuts) if c
        ]
        languages: list[str | None] = [None] * len(audios)
        for chunk in range(0, len(loudest), self.batch_size):
            batch = loudest[chunk:chunk + self.batch_size]
            _, probs = self.model.detect_language(self._mels(audios, batch))
            for (i, _, _), p in zip(batch, probs):
                languages[i] = max(p, key=p.get)
        return languages

    def _options(self, language: str) -> whisper.DecodingOptions:
        return whisper.DecodingOptions(
            language=language, without_timestamps=False, fp16=self.device.startswith("cuda"),
            sample_len=self.max_new_tokens,
        )

    def _tokenizer(self, language: str):
        return get_tokenizer(
            self.model.is_multilingual, num_languages=self.model.num_languages, language=language, task="transcribe",
        )


def _checkpoint(path_or_name: str) -> str:
    """A ``.pt`` file, the one ``.pt`` inside a folder (a copied model), or an openai-whisper name."""
    path = Path(path_or_name)
    if path.is_dir():
        checkpoints = sorted(path.glob("*.pt"))
        if len(checkpoints) != 1:
            raise FileNotFoundError(f"expected one whisper .pt checkpoint in {path}, found {len(checkpoints)}")
        return str(checkpoints[0])
    return path_or_name
