"""Talks with known words at known times: espeak-ng speech laid on a silent (or musical) track and muxed
into an ffmpeg-made video. Tests and the ASR quality benchmark score transcripts against them.

espeak-ng is Debian's package (``make test`` installs it); nothing here runs in the pipeline itself.
"""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import ffmpeg
import numpy as np

from pipeline.media import ffmpeg as ff
from pipeline.media.synth import _colour, _concat, _encode

SAMPLE_RATE = 16000
ONSET_LEVEL = 0.02  # what counts as the first sound of an utterance (espeak-ng starts with a little silence)


@dataclass(frozen=True)
class Utterance:
    start_s: float  # first audible sample
    end_s: float  # last audible sample
    text: str


def speak(text: str, voice: str = "en-us", words_per_minute: int = 160) -> np.ndarray:
    """``text`` spoken by espeak-ng, as 16 kHz mono float32 trimmed to its audible part."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng is not installed (Debian package espeak-ng; `make test` installs it)")
    wav = subprocess.run(
        [exe, "-v", voice, "-s", str(words_per_minute), "--stdout", text], capture_output=True, check=True,
    ).stdout
    raw, _, code = ff.run_args(
        ["-loglevel", "error", "-f", "wav", "-i", "pipe:0", "-f", "f32le", "-ac", "1", "-ar", str(SAMPLE_RATE),
         "pipe:1"],
        stdin=wav,
    )
    if code != 0:
        raise RuntimeError(f"ffmpeg could not resample espeak-ng's output for {text[:40]!r}")
    samples = np.frombuffer(raw, dtype=np.float32)
    loud = np.flatnonzero(np.abs(samples) > ONSET_LEVEL)
    return samples[loud[0]:loud[-1] + 1].copy() if len(loud) else samples.copy()


def lay_out(
    sentences: list[tuple[float, str]], duration_s: float, voice: str = "en-us", words_per_minute: int = 160,
) -> tuple[np.ndarray, list[Utterance]]:
    """A ``duration_s`` track with each ``(start_s, text)`` spoken from ``start_s``; returns the track and where
    each utterance really is. Raises when utterances would overlap or run past the end."""
    track = np.zeros(int(round(duration_s * SAMPLE_RATE)), dtype=np.float32)
    utterances: list[Utterance] = []
    for start_s, text in sorted(sentences):
        speech = speak(text, voice, words_per_minute)
        begin = int(round(start_s * SAMPLE_RATE))
        end = begin + len(speech)
        if end > len(track) or (utterances and start_s < utterances[-1].end_s):
            raise ValueError(f"utterance at {start_s:.1f} s ({len(speech) / SAMPLE_RATE:.1f} s long) does not fit")
        track[begin:end] = speech * 0.8
        utterances.append(Utterance(round(begin / SAMPLE_RATE, 3), round(end / SAMPLE_RATE, 3), text))
    return track, utterances


def music(duration_s: float, seed: int = 0) -> np.ndarray:
    """A melody of sine chords with harmonics and a beat: music, not speech, for no-speech checks."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(duration_s * SAMPLE_RATE)) / SAMPLE_RATE
    note_s = 0.4
    roots = 220.0 * 2 ** (rng.integers(0, 12, size=int(duration_s / note_s) + 1) / 12)
    f = roots[(t / note_s).astype(int)]
    phase = 2 * np.pi * np.cumsum(f) / SAMPLE_RATE
    tone = sum(np.sin(k * phase) / k for k in (1, 2, 3)) + 0.5 * np.sin(1.5 * phase)
    envelope = np.exp(-3 * (t % note_s))
    beat = np.where((t % 0.8) < 0.05, rng.standard_normal(len(t)) * 0.3, 0.0)
    return (0.25 * tone * envelope + beat).astype(np.float32)


def write_talk(
    path, audio: np.ndarray, scenes: list[tuple[str, float]] | None = None, size: tuple[int, int] = (160, 120),
) -> Path:
    """A video (colour ``scenes``, or one grey scene) with ``audio`` (16 kHz mono float32) as AAC."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    duration = len(audio) / SAMPLE_RATE
    scenes = scenes or [("gray", duration)]
    wav = path.with_name(f".{path.stem}.wav")
    try:
        _, err, code = ff.run_args(
            ["-loglevel", "error", "-y", "-f", "f32le", "-ar", str(SAMPLE_RATE), "-ac", "1", "-i", "pipe:0",
             "-c:a", "pcm_s16le", str(wav)],
            stdin=np.clip(audio, -1, 1).astype(np.float32).tobytes(),
        )
        if code != 0:
            raise RuntimeError(f"writing {wav.name}: {ff.last_error_line(err)}")
        video = _concat([_colour(c, s, 25, size) for c, s in scenes])
        _encode([video, ffmpeg.input(str(wav)).audio], path, codec="libx264", gop=250, audio=True, shortest=None)
    finally:
        wav.unlink(missing_ok=True)
    return path


# A short talk on one topic (so a summary has something to say), sentences of 6 to 16 words.
TALK = (
    "Today we are going to bake a loaf of sourdough bread at home.",
    "First, mix the flour with warm water and let it rest for an hour.",
    "Then add the starter and a spoonful of salt.",
    "Fold the dough every thirty minutes while it rises on the kitchen counter.",
    "After four hours, shape it into a round loaf and put it in a basket.",
    "The basket goes into the fridge overnight, which gives the bread its sour taste.",
    "In the morning, heat the oven with a heavy pot inside it.",
    "Bake the loaf in the covered pot for twenty minutes.",
    "Then take the lid off so that the crust turns dark brown.",
    "Let the bread cool for an hour before you cut it.",
    "That is all you need for a crisp crust and a soft crumb.",
    "Thank you for watching, and happy baking.",
)
PAUSES_S = (0.6, 1.2, 2.5, 0.8, 1.6, 0.7, 2.0, 1.0, 0.9, 1.4, 2.2)


def lay_out_talk(
    texts: tuple[str, ...] = TALK, pauses_s: tuple[float, ...] = PAUSES_S, voice: str = "en-us",
    lead_s: float = 1.0, tail_s: float = 1.5, straddle_s: tuple[float, ...] = (30.0, 60.0),
) -> tuple[np.ndarray, list[Utterance]]:
    """``texts`` spoken one after another with ``pauses_s`` between them (cycled), where every time in
    ``straddle_s`` that would fall in a pause is moved into the middle of the next sentence instead, so that
    sentences lie across the 30 s marks where windowed decoders cut."""
    clips = [speak(text, voice) for text in texts]
    starts, t = [], lead_s
    for i, clip in enumerate(clips):
        length = len(clip) / SAMPLE_RATE
        for mark in straddle_s:
            if t > mark - length / 2 and (not starts or starts[-1] + len(clips[i - 1]) / SAMPLE_RATE < mark):
                if t > mark:  # the mark fell in the pause: pull this sentence back across it
                    t = max(mark - length / 2, starts[-1] + len(clips[i - 1]) / SAMPLE_RATE + 0.3 if starts else 0)
        starts.append(t)
        t += length + pauses_s[i % len(pauses_s)]
    duration = starts[-1] + len(clips[-1]) / SAMPLE_RATE + tail_s
    return lay_out(list(zip(starts, texts)), duration, voice)


def word_error_rate(reference: str, hypothesis: str, english: bool = True) -> float:
    """WER after Whisper's own text normalisation (English, or the basic one for other languages)."""
    import jiwer
    from whisper.normalizers import BasicTextNormalizer, EnglishTextNormalizer

    normalise = EnglishTextNormalizer() if english else BasicTextNormalizer()
    return float(jiwer.wer(normalise(reference), normalise(hypothesis)))


def start_errors(utterances: list[Utterance], starts_s: list[float]) -> list[float]:
    """For each utterance, how far the nearest transcript segment start is from where it really starts."""
    if not starts_s:
        return [float("inf")] * len(utterances)
    return [min(abs(u.start_s - s) for s in starts_s) for u in utterances]
