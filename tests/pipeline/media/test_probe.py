"""probe: stream facts from ffmpeg, frame count and true timing from decord, one-line errors for bad input."""
from __future__ import annotations

import shutil
import time

import pytest

from pipeline.media.probe import MediaError, ProbeResult, probe
from pipeline.media.synth import make_vfr_video


def test_constant_rate_video_with_audio(rgb_video):
    assert probe(str(rgb_video)) == ProbeResult(
        duration_s=6.0, width=320, height=240, fps=25.0, num_frames=150, codec="h264",
        has_audio=True, rotation=0, audio_codec="aac", audio_sample_rate=44100,
    )


def test_matroska_without_audio(pattern_video):
    info = probe(str(pattern_video))
    assert (info.num_frames, info.fps, info.duration_s) == (50, 25.0, 2.0)
    assert not info.has_audio and info.audio_codec is None and info.audio_sample_rate is None


def test_rotation_gives_display_size(rotated_video):
    info = probe(str(rotated_video))
    assert info.rotation == 90
    assert (info.width, info.height) == (240, 320)  # coded 320x240, shown portrait


def test_variable_frame_rate_uses_true_timestamps(vfr_video):
    info = probe(str(vfr_video))
    assert info.num_frames == 10 + 39 + 36
    assert info.duration_s == pytest.approx(4.5, abs=0.05)
    # 84 intervals between the first frame (0 s) and the last (4.5 s - 1/30 s): neither 5 nor 30 fps.
    assert info.fps == pytest.approx(84 / (4.5 - 1 / 30), rel=0.01)


def test_variable_frame_rate_matroska_is_remuxed_for_decord(media_dir):
    # decord alone cannot count frames here (no frame count, no average rate in the container).
    path = make_vfr_video(media_dir / "vfr.mkv", [("red", 1.0, 5), ("blue", 1.0, 30)])
    info = probe(str(path))
    assert info.num_frames == 35 and info.duration_s == pytest.approx(2.0, abs=0.05)


def test_missing_file():
    with pytest.raises(MediaError, match="file not found"):
        probe("/nonexistent/video.mp4")


@pytest.mark.parametrize(
    "name, message",
    [
        ("empty", "empty file"),
        ("random", "cannot decode|not a video"),
        ("truncated", "cannot decode: moov atom not found"),
        ("truncated_faststart", "cannot decode: truncated or corrupt"),
        ("text_as_mp4", "cannot decode|not a video"),
        ("text", "not a video: looks like text"),
        ("audio_only", "not a video: no video stream"),
    ],
)
def test_broken_input_raises_readable_error(broken_files, name, message):
    started = time.monotonic()
    with pytest.raises(MediaError, match=message) as caught:
        probe(str(broken_files[name]))
    assert time.monotonic() - started < 10
    text = str(caught.value)
    assert "\n" not in text and len(text) < 200


def test_still_image_is_not_a_video(tmp_path):
    from PIL import Image

    image = tmp_path / "still.png"
    Image.new("RGB", (32, 24), "red").save(image)
    with pytest.raises(MediaError, match="not a video: a still image"):
        probe(str(image))
    # Same bytes under a video name: still refused (ffmpeg recognises the content, not the name).
    disguised = tmp_path / "still.mp4"
    shutil.copy(image, disguised)
    with pytest.raises(MediaError):
        probe(str(disguised))


@pytest.mark.parametrize("suffix", [".ts", ".avi", ".mkv"])
def test_other_containers_give_the_same_answer(rgb_remuxed, suffix):
    # decord alone hangs seeking in this MPEG-TS and makes up AVI timestamps; probe must not care.
    started = time.monotonic()
    info = probe(str(rgb_remuxed(suffix)))
    assert (info.num_frames, info.fps, info.width, info.height) == (150, 25.0, 320, 240)
    assert info.duration_s == pytest.approx(6.0, abs=0.05)
    assert time.monotonic() - started < 10


def test_sample_aspect_ratio_widens_the_display_size(rgb_remuxed):
    path = rgb_remuxed(".mp4", **{"bsf:v": "h264_metadata=sample_aspect_ratio=2/1"})
    info = probe(str(path))
    assert (info.width, info.height) == (640, 240)
