"""Where people speak: Silero VAD (its weights ship in the ``silero-vad`` wheel), as sample ranges.

The ONNX build runs on onnxruntime's CPU provider, on any node: it takes about 0.3% of real time on one
core, and unlike the TorchScript build it needs no seconds of warm-up on its first call in each process.

Whisper is given only audio around speech: windows cut in the pauses between utterances hold whole
sentences, music and silence never reach the decoder (where Whisper invents text), and segment times can be
pinned to the moment speech really starts.
"""
from __future__ import annotations

import threading
from importlib import resources

import numpy as np
import torch

SAMPLE_RATE = 16000
THRESHOLD = 0.5
MIN_SPEECH_MS = 250
MIN_SILENCE_MS = 300  # shorter gaps are pauses inside a sentence
SPEECH_PAD_MS = 30

_lock = threading.Lock()


class SpeechDetector:
    def __init__(self, threshold: float = THRESHOLD):
        # Importing silero_vad sets torch's thread count to 1 for the whole process; the ASR needs them all.
        threads = torch.get_num_threads()
        try:
            from silero_vad import get_speech_timestamps
            from silero_vad.utils_vad import OnnxWrapper
        finally:
            torch.set_num_threads(threads)
        self._timestamps = get_speech_timestamps
        self.model = OnnxWrapper(str(resources.files("silero_vad.data") / "silero_vad.onnx"), force_onnx_cpu=True)
        self.threshold = threshold

    def regions(self, audio: np.ndarray) -> list[tuple[int, int]]:
        """``[start, end)`` sample ranges of speech in 16 kHz mono ``audio``, in order, not overlapping."""
        if len(audio) < 512:  # less than one VAD window
            return []
        with _lock:  # the model keeps state between windows: one caller at a time
            found = self._timestamps(
                torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)), self.model,
                threshold=self.threshold, sampling_rate=SAMPLE_RATE, min_speech_duration_ms=MIN_SPEECH_MS,
                min_silence_duration_ms=MIN_SILENCE_MS, speech_pad_ms=SPEECH_PAD_MS,
            )
        return [(int(r["start"]), int(r["end"])) for r in found]
