"""extract_audio: 16 kHz mono float32 in memory, None without an audio stream."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.media.audio import SAMPLE_RATE, extract_audio
from pipeline.media.probe import MediaError, probe
from pipeline.media.synth import make_video


def dominant_hz(samples: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / SAMPLE_RATE)[spectrum.argmax()])


def test_tone_decodes_to_16k_mono_float(rgb_video):
    samples = extract_audio(str(rgb_video))
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert len(samples) == pytest.approx(6.0 * SAMPLE_RATE, rel=0.01)
    assert -1.0 <= samples.min() and samples.max() <= 1.0 and samples.std() > 0.05
    assert dominant_hz(samples) == pytest.approx(440.0, abs=2.0)
    assert samples.flags.writeable


def test_given_probe_result_is_used(rgb_video):
    info = probe(str(rgb_video))
    assert len(extract_audio(str(rgb_video), info)) == len(extract_audio(str(rgb_video)))


def test_no_audio_stream_gives_none(pattern_video):
    assert extract_audio(str(pattern_video)) is None


def test_other_codec_and_rate(media_dir):
    # Opus in WebM decodes at 48 kHz; the result must still be 16 kHz.
    path = make_video(media_dir / "tone.webm", [("gray", 1.0)], size=(64, 48), codec="libvpx-vp9", tone_hz=1000.0)
    samples = extract_audio(str(path))
    assert len(samples) == pytest.approx(SAMPLE_RATE, rel=0.02)
    assert dominant_hz(samples) == pytest.approx(1000.0, abs=2.0)


def test_broken_input_raises_media_error(broken_files):
    with pytest.raises(MediaError, match="empty file"):
        extract_audio(str(broken_files["empty"]))
