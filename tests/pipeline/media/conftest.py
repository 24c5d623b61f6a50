"""Media with known content, built once per session with synth (ffmpeg) and shared by the media tests."""
from __future__ import annotations

from pathlib import Path

import ffmpeg
import numpy as np
import pytest

from pipeline.media import ffmpeg as ff
from pipeline.media.synth import make_vfr_video, make_video

# Scene lengths chosen off the 0.25 s sampling grid, so that finding the exact cut frame is tested.
LEVELS = [("black", 1.4), ("white", 1.4), ("#606060", 1.4), ("#c0c0c0", 1.4)]  # cuts score ~1.0, 0.62, 0.38


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def rgb_video(media_dir) -> Path:
    """Red, lime, blue for 2 s each at 25 fps, one GOP, a 440 Hz tone throughout."""
    return make_video(media_dir / "rgb.mp4", [("red", 2.0), ("lime", 2.0), ("blue", 2.0)], tone_hz=440.0, gop=250)


@pytest.fixture(scope="session")
def levels_video(media_dir) -> Path:
    return make_video(media_dir / "levels.mp4", LEVELS, size=(160, 120))


@pytest.fixture(scope="session")
def pattern_video(media_dir) -> Path:
    """testsrc2, no audio, in Matroska."""
    return make_video(media_dir / "pattern.mkv", [("black", 2.0)], test_pattern=True)


@pytest.fixture(scope="session")
def rotated_video(media_dir) -> Path:
    """A landscape-coded test pattern that players show turned 90 degrees clockwise (portrait)."""
    return make_video(media_dir / "rotated.mp4", [("black", 1.0)], test_pattern=True, rotate=90)


@pytest.fixture(scope="session")
def vfr_video(media_dir) -> Path:
    """Red 2 s at 5 fps, then lime 1.3 s and blue 1.2 s at 30 fps: cuts at 2.0 s (frame 10) and 3.3 s (frame 49)."""
    return make_vfr_video(media_dir / "vfr.mp4", [("red", 2.0, 5), ("lime", 1.3, 30), ("blue", 1.2, 30)])


@pytest.fixture(scope="session")
def broken_files(media_dir, rgb_video) -> dict[str, Path]:
    """Inputs that must fail with a readable MediaError."""
    d = media_dir / "broken"
    d.mkdir()
    good = rgb_video.read_bytes()
    faststart = d / "faststart.mp4"
    # With the index first, a cut-off file still opens; only decoding can tell it is incomplete.
    ff.run(ffmpeg.input(str(rgb_video)).output(str(faststart), c="copy", movflags="+faststart"))
    files = {
        "empty": (d / "empty.mp4", b""),
        "random": (d / "random.mov", np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes()),
        "truncated": (d / "truncated.mp4", good[: len(good) * 3 // 10]),
        "truncated_faststart": (d / "truncated_fs.mp4", faststart.read_bytes()[: faststart.stat().st_size * 3 // 10]),
        "text_as_mp4": (d / "letter.mp4", b"Dear reader, this is not a video.\n" * 20),
        "text": (d / "letter.txt", b"Dear reader, this is not a video.\n" * 20),
    }
    for path, data in files.values():
        path.write_bytes(data)
    audio_only = d / "tone.m4a"
    ff.run(ffmpeg.input("sine=frequency=440:duration=1", f="lavfi").output(str(audio_only), acodec="aac"))
    return {name: path for name, (path, _) in files.items()} | {"audio_only": audio_only}


@pytest.fixture(scope="session")
def rgb_remuxed(media_dir, rgb_video):
    """``rgb_remuxed(suffix, **options)``: the rgb video's streams copied into another container."""

    def remux(suffix: str, **options) -> Path:
        path = media_dir / f"rgb-{'-'.join(options) or 'copy'}{suffix}"
        if not path.exists():
            ff.run(ffmpeg.input(str(rgb_video)).output(str(path), c="copy", **options))
        return path

    return remux
