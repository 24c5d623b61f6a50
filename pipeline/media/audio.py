"""A video's first audio stream as 16 kHz mono float32, decoded by ffmpeg straight into memory."""
from __future__ import annotations

import logging

import ffmpeg
import numpy as np

from pipeline.media import ffmpeg as ff
from pipeline.media.probe import ProbeResult, probe

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000


def extract_audio(
    path: str, probe_result: ProbeResult | None = None, max_duration_s: float | None = None
) -> np.ndarray | None:
    """Samples in [-1, 1]; None when there is no audio to transcribe (no audio stream, or an empty one).

    ``max_duration_s``: an audio stream longer than this (it may outlast the video) is refused with a
    MediaError after decoding at most one second more of it, so its samples never exceed the limit's size.
    """
    info = probe_result or probe(path)
    if not info.has_audio:
        return None
    cap = {"t": max_duration_s + 1.0} if max_duration_s else {}
    stream = ffmpeg.input(path).output(
        "pipe:1", map="0:a:0", format="f32le", acodec="pcm_f32le", ac=1, ar=SAMPLE_RATE, **cap
    )
    # Decoding runs far faster than real time; a limit of the playing time itself only stops a stuck process.
    raw = ff.run(stream, timeout=120.0 + info.duration_s, what="cannot decode audio")
    if not raw:
        log.warning("%s: the audio stream holds no samples", path)
        return None
    if max_duration_s and len(raw) > max_duration_s * SAMPLE_RATE * 4:
        raise ff.MediaError(f"audio is longer than limits.max_duration_s ({max_duration_s:g} s)")
    # Copied out of the immutable pipe buffer: consumers (whisper, torch) expect a writable array.
    samples = np.frombuffer(raw, dtype=np.float32).copy()
    # Lossy codecs overshoot full scale slightly.
    return np.clip(samples, -1.0, 1.0, out=samples)
