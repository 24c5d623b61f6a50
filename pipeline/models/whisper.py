"""Whisper speech recognition over batched, speech-aligned windows.

``whisper.transcribe`` walks one file window after window, each decode waiting for the previous one to say
where to seek. Here a voice activity detector finds the speech of every file first, the speech is grouped
into windows of at most 30 s cut in the pauses between utterances, and the windows of all files go through
``whisper.decode`` together, which is what keeps a GPU busy. Music and silence never reach the decoder.

Text is decoded without timestamp tokens and timed afterwards by word alignment
(``pipeline.models.whisper_timing``). No text is dropped quietly: a window whose decode is too repetitive
or too unlikely is decoded again at the next temperature (``transcribe``'s fallback), and one that runs out
of tokens is split in a pause and its halves decoded. What still fails after all that is kept, and logged.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import whisper
from whisper.audio import CHUNK_LENGTH, N_FRAMES, N_SAMPLES, SAMPLE_RATE
from whisper.tokenizer import get_tokenizer

from pipeline.models.whisper_timing import TranscriptSegment, align_words, pin_to_speech, sentences

log = logging.getLogger(__name__)

SEARCH_S = 5.0  # how far back from the 30 s mark a quieter cut point is looked for
FRAME_S = 0.1  # resolution of the energy profile used to find it
# whisper.transcribe's defaults for its fallback and its no-speech test.
TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
COMPRESSION_RATIO_THRESHOLD = 2.4
NO_SPEECH_THRESHOLD = 0.6
LOGPROB_THRESHOLD = -1.0
PAD_S = 0.2  # audio kept around speech: onsets and final consonants are quiet
MIN_SPLIT_S = 4.0  # windows shorter than this are not split further when their decode runs out of tokens


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


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """``(first, last)`` indices of each run of True in ``mask``."""
    edges = np.flatnonzero(np.diff(np.concatenate(([0], mask.astype(np.int8), [0]))))
    return [(int(a), int(b) - 1) for a, b in zip(edges[::2], edges[1::2])]


def _frame_rms(audio: np.ndarray, frame: int) -> np.ndarray:
    n = len(audio) // frame
    return np.sqrt(np.mean(np.square(audio[:n * frame].reshape(n, frame), dtype=np.float64), axis=1))


def plan_windows(
    regions: list[tuple[int, int]], audio: np.ndarray, sample_rate: int = SAMPLE_RATE, max_s: float = CHUNK_LENGTH,
    pad_s: float = PAD_S,
) -> list[tuple[tuple[int, int], ...]]:
    """Windows of at most ``max_s`` of audio holding every speech region of ``audio``, each a tuple of
    ``[start, end)`` pieces that are played back to back: the pauses between utterances are left out.

    Each region keeps ``pad_s`` around it (less where the next one is nearer: pads meet in the middle of
    the pause). Consecutive pieces share a window while their lengths add up to ``max_s`` at most; a region
    longer than that is cut at its quietest places (``cut_windows``). Whisper transcribes such dense windows
    better than windows of the same speech with the pauses in (WER 0.035 against 0.056 for base on the
    benchmark talk), and fewer windows cost fewer encoder passes.
    """
    max_len, pad = int(max_s * sample_rate), int(pad_s * sample_rate)
    padded = []
    for i, (s, e) in enumerate(regions):
        lo = max(s - pad, (regions[i - 1][1] + s) // 2 if i else 0)
        hi = min(e + pad, (e + regions[i + 1][0]) // 2 if i + 1 < len(regions) else len(audio))
        padded.append((lo, hi))
    pieces: list[tuple[int, int]] = []
    for s, e in padded:
        if e - s <= max_len:
            pieces.append((s, e))
        else:
            pieces += [(s + a, s + b) for a, b in cut_windows(audio[s:e], sample_rate, max_s)]
    windows: list[list[tuple[int, int]]] = []
    for s, e in pieces:
        if windows and sum(b - a for a, b in windows[-1]) + e - s <= max_len:
            windows[-1].append((s, e))
        else:
            windows.append([(s, e)])
    return [tuple(w) for w in windows]


@dataclass(frozen=True)
class _Window:
    audio: int  # which of the audios
    pieces: tuple[tuple[int, int], ...]  # sample ranges of that audio, played back to back
    temperature: int = 0  # index into the temperatures to decode at

    @property
    def samples(self) -> int:
        return sum(e - s for s, e in self.pieces)

    def clip(self, audio: np.ndarray) -> np.ndarray:
        return np.concatenate([audio[s:e] for s, e in self.pieces])

    def to_audio_time(self, t: float) -> float:
        """A time in seconds within the window's clip, as a time in the audio."""
        into = int(round(t * SAMPLE_RATE))
        for s, e in self.pieces:
            if into < e - s:
                return (s + into) / SAMPLE_RATE
            into -= e - s
        return self.pieces[-1][1] / SAMPLE_RATE

    def describe(self) -> str:
        return f"{self.pieces[0][0] / SAMPLE_RATE:.1f}-{self.pieces[-1][1] / SAMPLE_RATE:.1f} s"


class WhisperAsr:
    def __init__(
        self, path_or_name: str, device: str = "cpu", batch_size: int = 8, max_new_tokens: int = 224,
        temperatures: tuple[float, ...] = TEMPERATURES,
    ):
        from pipeline.models.vad import SpeechDetector

        if not temperatures or any(t < 0 for t in temperatures):
            raise ValueError(f"temperatures must be a non-empty list of numbers >= 0, got {temperatures!r}")
        self.name = path_or_name
        self.device = device
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.temperatures = tuple(float(t) for t in temperatures)
        checkpoint = _checkpoint(path_or_name)
        self.model = whisper.load_model(checkpoint, device=device).eval()
        _load_alignment_heads(self.model, checkpoint)
        if device == "cpu":
            _column_major_embedding(self.model)
        self.vad = SpeechDetector()
        self.counts: Counter[str] = Counter()  # windows decoded, retried, split, kept although failing

    def transcribe(self, audio: np.ndarray) -> Transcript:
        return self.transcribe_many([audio])[0]

    def transcribe_many(self, audios: list[np.ndarray]) -> list[Transcript]:
        """Transcripts of 16 kHz mono float32 ``audios``; the windows of all of them are decoded in batches."""
        audios = [np.asarray(a, dtype=np.float32) for a in audios]
        speech = [self.vad.regions(a) for a in audios]
        windows = [_Window(i, pieces) for i, a in enumerate(audios) for pieces in plan_windows(speech[i], a)]
        languages, encoded = self._languages(audios, windows)
        segments: list[list[TranscriptSegment]] = [[] for _ in audios]
        # One decode per language (DecodingOptions holds one); in practice one stream of batches per call.
        for language in dict.fromkeys(lang for lang in languages if lang):
            todo = [w for w in windows if languages[w.audio] == language]
            for w, segs in self._decode(audios, todo, language, encoded):
                segments[w.audio].extend(segs)
        transcripts = []
        for i, segs in enumerate(segments):
            regions_s = [(s / SAMPLE_RATE, e / SAMPLE_RATE) for s, e in speech[i]]
            pinned = [pin_to_speech(seg, regions_s) for seg in sorted(segs, key=lambda seg: seg.start_s)]
            transcripts.append(Transcript(languages[i], pinned))
        return transcripts

    def _decode(
        self, audios: list[np.ndarray], windows: list[_Window], language: str, encoded: dict[_Window, torch.Tensor],
    ) -> list[tuple[_Window, list[TranscriptSegment]]]:
        """The timed sentences of every window, after retries and splits."""
        tokenizer = self._tokenizer(language)
        done: list[tuple[_Window, list[TranscriptSegment]]] = []
        queue = list(windows)
        while queue:
            by_temperature: dict[int, list[_Window]] = {}
            for w in queue:
                by_temperature.setdefault(w.temperature, []).append(w)
            queue = []
            for t, group in sorted(by_temperature.items()):
                options = self._options(language, self.temperatures[t])
                for chunk in range(0, len(group), self.batch_size):
                    batch = group[chunk:chunk + self.batch_size]
                    features = self._features(audios, batch, encoded)
                    if self.temperatures[t] > 0:
                        torch.manual_seed(0)  # sampled retries give the same text on every rerun
                    results = whisper.decode(self.model, features, options)
                    self.counts["decoded"] += len(batch)
                    for w, f, result in zip(batch, features, results):
                        instead = self._review(w, result, audios[w.audio])
                        if instead is None:
                            words = align_words(self.model, tokenizer, f, result.tokens, w.samples / SAMPLE_RATE)
                            done.append((w, sentences(words, w.to_audio_time)))
                        queue += instead or []
        return done

    def _review(self, w: _Window, result, audio: np.ndarray) -> list[_Window] | None:
        """None to accept ``result``, else the windows to decode instead (none: the window holds no speech)."""
        # whisper.transcribe's own test for a window without speech: nothing to keep, nothing to retry.
        if result.no_speech_prob > NO_SPEECH_THRESHOLD and result.avg_logprob < LOGPROB_THRESHOLD:
            return []
        truncated = len(result.tokens) >= self.max_new_tokens
        repetitive = result.compression_ratio > COMPRESSION_RATIO_THRESHOLD
        splittable = truncated and w.samples >= 2 * MIN_SPLIT_S * SAMPLE_RATE
        last_try = w.temperature + 1 == len(self.temperatures)
        # Too much speech for the token budget: halves. A loop that ran into the budget: another temperature
        # first, halves once the temperatures are spent.
        if splittable and (not repetitive or last_try):
            self.counts["split"] += 1
            return [_Window(w.audio, half) for half in _halves(audio, w.pieces)]
        if truncated or repetitive or result.avg_logprob < LOGPROB_THRESHOLD:
            if not last_try:
                self.counts["retried"] += 1
                return [dataclasses.replace(w, temperature=w.temperature + 1)]
            self.counts["kept_failing"] += 1
            log.warning(
                "whisper: window %s kept although its decode %s at every temperature", w.describe(),
                "ran out of tokens" if truncated else "repeated itself" if repetitive else "stayed unlikely",
            )
        return None

    def _features(
        self, audios: list[np.ndarray], windows: list[_Window], encoded: dict[_Window, torch.Tensor],
    ) -> torch.Tensor:
        """Encoder output ``[n, n_audio_ctx, n_audio_state]`` of ``windows``, reusing what is already encoded."""
        missing = [w for w in windows if w not in encoded]
        if missing:
            with torch.inference_mode():
                fresh = self.model.embed_audio(self._mels(audios, missing))
            encoded.update(zip(missing, fresh))
        return torch.stack([encoded.pop(w) for w in windows])

    def _mels(self, audios: list[np.ndarray], windows: list[_Window]) -> torch.Tensor:
        """Log-mel spectrograms ``[n, n_mels, 3000]`` of ``windows``, made per batch to bound memory."""
        mels = []
        for w in windows:
            clip = torch.from_numpy(w.clip(audios[w.audio]))
            mels.append(whisper.log_mel_spectrogram(whisper.pad_or_trim(clip, N_SAMPLES), n_mels=self.model.dims.n_mels))
        mel = whisper.pad_or_trim(torch.stack(mels), N_FRAMES).to(self.device)
        return mel.half() if self.device.startswith("cuda") else mel

    def _languages(
        self, audios: list[np.ndarray], windows: list[_Window],
    ) -> tuple[list[str | None], dict[_Window, torch.Tensor]]:
        """One language per audio (None without speech), detected on the window holding the most speech, and
        the encoder output of those windows, which their decode reuses."""
        if not self.model.is_multilingual:
            return ["en" if any(w.audio == i for w in windows) else None for i in range(len(audios))], {}
        richest: dict[int, _Window] = {}
        for w in windows:
            if w.audio not in richest or w.samples > richest[w.audio].samples:
                richest[w.audio] = w
        languages: list[str | None] = [None] * len(audios)
        encoded: dict[_Window, torch.Tensor] = {}
        chosen = list(richest.values())
        for chunk in range(0, len(chosen), self.batch_size):
            batch = chosen[chunk:chunk + self.batch_size]
            features = self._features(audios, batch, encoded)
            _, probs = self.model.detect_language(features)
            for w, f, p in zip(batch, features, probs):
                languages[w.audio] = max(p, key=p.get)
                encoded[w] = f
        return languages, encoded

    def _options(self, language: str, temperature: float) -> whisper.DecodingOptions:
        tokenizer = self._tokenizer(language)
        # Text only: whisper's own suppressions ("-1"), and the timestamp tokens, which nothing suppresses
        # once timestamps are off (a well-trained model does not emit them; a random-weight one does).
        timing = [tokenizer.no_timestamps, *range(tokenizer.timestamp_begin, self.model.dims.n_vocab)]
        return whisper.DecodingOptions(
            language=language, without_timestamps=True, fp16=self.device.startswith("cuda"),
            sample_len=self.max_new_tokens, temperature=temperature, suppress_tokens=[-1, *timing],
        )

    def _tokenizer(self, language: str):
        return get_tokenizer(
            self.model.is_multilingual, num_languages=self.model.num_languages, language=language, task="transcribe",
        )


def _halves(audio: np.ndarray, pieces: tuple[tuple[int, int], ...]) -> list[tuple[tuple[int, int], ...]]:
    """``pieces`` in two of about equal length: at the piece boundary nearest the middle, or, for one piece,
    at its quietest place around its middle."""
    if len(pieces) > 1:
        total, run, best = sum(e - s for s, e in pieces), 0, (float("inf"), 1)
        for i, (s, e) in enumerate(pieces[:-1], 1):
            run += e - s
            best = min(best, (abs(run - total / 2), i))
        return [pieces[:best[1]], pieces[best[1]:]]
    (start, end), = pieces
    middle = (start + end) // 2
    cut = start + cut_windows(audio[start:end], max_s=(middle - start) / SAMPLE_RATE + SEARCH_S / 2)[0][1]
    return [((start, cut),), ((cut, end),)]


def _column_major_embedding(model) -> None:
    """Store the token embedding column-major: the same values, laid out for the output projection.

    Every decoding step ends with ``x @ embedding.T`` over the whole vocabulary. On the CPU that product
    reads a row-major embedding at half the speed of its transpose (7 ms against 14 ms a step for base at
    batch 2: the largest single cost of a step), while the embedding lookup of a few tokens does not care.
    """
    embedding = model.decoder.token_embedding
    embedding.weight = torch.nn.Parameter(embedding.weight.detach().t().contiguous().t(), requires_grad=False)


def _load_alignment_heads(model, checkpoint: str) -> None:
    """The heads that follow the speech best, where the checkpoint's folder names them (``alignment_heads.json``,
    written by the CTranslate2 conversion); openai-whisper sets them itself for its named models."""
    sidecar = Path(checkpoint).with_name("alignment_heads.json")
    if sidecar.is_file():
        mask = torch.zeros(model.dims.n_text_layer, model.dims.n_text_head, dtype=torch.bool)
        for layer, head in json.loads(sidecar.read_text()):
            mask[layer, head] = True
        model.register_buffer("alignment_heads", mask.to_sparse().to(model.device), persistent=False)


def _checkpoint(path_or_name: str) -> str:
    """A ``.pt`` file, the one ``.pt`` inside a folder (a copied model), or an openai-whisper name."""
    path = Path(path_or_name)
    if path.is_dir():
        checkpoints = sorted(path.glob("*.pt"))
        if len(checkpoints) != 1:
            raise FileNotFoundError(f"expected one whisper .pt checkpoint in {path}, found {len(checkpoints)}")
        return str(checkpoints[0])
    return path_or_name
