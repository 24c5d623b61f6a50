"""Per-video limits: a pixel budget checked before any frame is decoded, and a duration limit.

The 16000x16000 files are real (ffmpeg encodes one frame and repeats its packet, which takes about a
second); their peak memory is measured in a fresh process (``ru_maxrss`` of it and of its ffmpeg children).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import ffmpeg
import pytest

from pipeline.config import ConfigError, Limits, load_config
from pipeline.media import ffmpeg as ff
from pipeline.media.keyframes import extract_keyframes
from pipeline.media.probe import MediaError, probe
from pipeline.media.synth import make_video
from pipeline.stages.decode import MediaDecoder
from pipeline.task import VideoTask

HUGE = 16000
SCENES = [("black", 1.4), ("white", 1.4), ("#606060", 1.4)]  # two clear cuts, off the sampling grid
# Decoding a 16000x16000 H.264 picture at full size took 3.8 GB (and 476 MB for MJPEG on 2 threads);
# an import of the decode stage alone takes about 75 MB.
PEAK_LIMIT_MB = 400

_DECODE_AND_MEASURE = """
import json, resource, sys
from pathlib import Path
from pipeline.stages.decode import MediaDecoder
from pipeline.task import VideoTask

path = Path(sys.argv[1])
task = VideoTask("v", path.as_uri(), "fp", path.stat().st_size)
MediaDecoder().process([task])
# VmHWM, not RUSAGE_SELF: Linux carries ru_maxrss over exec, so a process started from a big pytest would
# report the parent's peak.
hwm = next(int(line.split()[1]) for line in open('/proc/self/status') if line.startswith('VmHWM:'))
peak = max(hwm, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
print(json.dumps({
    "error": task.error,
    "lowres": task.probe.decode_lowres if task.probe else None,
    "size": [task.probe.width, task.probe.height] if task.probe else None,
    "frames": [[f.width, f.height] for f in task.frames],
    "peak_mb": peak / 1024,
}))
"""


def _decode_in_fresh_process(path: Path) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", _DECODE_AND_MEASURE, str(path)], capture_output=True, text=True, timeout=120,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def _repeat_one_frame(directory: Path, name: str, codec: str, frames: int = 8) -> Path:
    """A ``HUGE``-square video of ``frames`` identical frames: one encoded picture, its packet repeated."""
    source = ffmpeg.input(f"color=c=red:size={HUGE}x{HUGE}:rate=8,format=yuv420p", f="lavfi")
    if codec == "h264":
        one = directory / f"{name}.h264"
        ff.run(source.output(str(one), vframes=1, vcodec="libx264", preset="ultrafast", threads=1))
        # An Annex B stream of the same IDR picture over again is a valid stream of that many frames.
        one.write_bytes(one.read_bytes() * frames)
        packets = ffmpeg.input(str(one), framerate=8)
    else:
        one = directory / f"{name}.jpg"
        ff.run(source.output(str(one), vframes=1, vcodec="mjpeg", pix_fmt="yuvj420p", **{"q:v": 31}, threads=1))
        packets = ffmpeg.input(str(one), loop=1, framerate=8)
    video = directory / f"{name}.mp4"
    ff.run(packets.output(str(video), vframes=frames, vcodec="copy"))
    one.unlink()
    return video


@pytest.fixture(scope="module")
def huge_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("huge")


def test_huge_h264_fails_before_any_frame_is_decoded(huge_dir):
    video = _repeat_one_frame(huge_dir, "huge-h264", "h264")
    result = _decode_in_fresh_process(video)
    assert result["error"] == (
        "decode: picture 16000x16000 (256.0 Mpx) is over limits.max_pixels (35.4 Mpx), "
        "and h264 cannot be decoded at a smaller size"
    )
    assert result["peak_mb"] < PEAK_LIMIT_MB, result


def test_huge_mjpeg_is_decoded_at_a_quarter_size(huge_dir):
    video = _repeat_one_frame(huge_dir, "huge-mjpeg", "mjpeg")
    result = _decode_in_fresh_process(video)
    assert result["error"] is None
    # 4000x4000 is the first power-of-two reduction within 35.4 Mpx; the table keeps the true size.
    assert result["lowres"] == 2 and result["size"] == [HUGE, HUGE]
    assert result["frames"] == [[512, 512]]  # one solid picture: one keyframe, at the JPEG size
    assert result["peak_mb"] < PEAK_LIMIT_MB, result


@pytest.mark.parametrize("codec", ["mjpeg", "mpeg4"])
def test_a_picture_over_the_budget_gives_the_same_keyframes_decoded_smaller(media_dir, codec):
    video = make_video(media_dir / f"levels-{codec}.mp4", SCENES, size=(320, 240), codec=codec)
    full, small = probe(str(video)), probe(str(video), max_pixels=320 * 240 // 4)
    assert (full.decode_lowres, small.decode_lowres) == (0, 1)
    assert small == full.__class__(**{**full.__dict__, "decode_lowres": 1})  # the same facts otherwise
    settings = load_config("in", "out").keyframes
    expected = [(k.frame_index, k.timestamp_s) for k in extract_keyframes(str(video), settings, full)]
    assert len(expected) == len(SCENES)
    assert [(k.frame_index, k.timestamp_s) for k in extract_keyframes(str(video), settings, small)] == expected


def test_a_codec_that_cannot_shrink_is_refused_over_the_budget(rgb_video):
    with pytest.raises(MediaError, match=r"picture 320x240 \(0.1 Mpx\) is over .* h264 cannot be decoded"):
        probe(str(rgb_video), max_pixels=320 * 240 - 1)
    assert probe(str(rgb_video), max_pixels=320 * 240).decode_lowres == 0  # at the budget is within it


def test_a_picture_too_large_even_at_an_eighth_is_refused(media_dir):
    video = make_video(media_dir / "small-mjpeg.mp4", [("red", 0.5)], size=(320, 240), codec="mjpeg")
    with pytest.raises(MediaError, match=r"over limits.max_pixels \(0.0 Mpx\) even decoded at 1/8 size"):
        probe(str(video), max_pixels=(320 // 8) * (240 // 8) - 1)


def _decode(path: Path, limits: Limits) -> VideoTask:
    task = VideoTask("v", path.as_uri(), "fp", path.stat().st_size)
    MediaDecoder(limits=limits).process([task])
    return task


def test_a_video_over_the_duration_limit_fails_before_decoding(rgb_video):
    task = _decode(rgb_video, Limits(max_duration_s=5))
    assert task.error == "decode: video is 6.0 s long, over limits.max_duration_s (5 s)"
    assert task.frames == [] and task.audio is None
    assert _decode(rgb_video, Limits(max_duration_s=6)).ok


def test_audio_that_outlasts_the_video_is_held_to_the_limit(media_dir):
    video = media_dir / "long-tail.mp4"
    picture = ffmpeg.input("color=c=red:size=160x120:rate=10:duration=2", f="lavfi")
    tone = ffmpeg.input("sine=frequency=440:sample_rate=16000:duration=8", f="lavfi")
    ff.run(ffmpeg.output(picture, tone, str(video), vcodec="libx264", acodec="aac"))
    task = _decode(video, Limits(max_duration_s=4))
    assert task.error == "decode: audio is longer than limits.max_duration_s (4 s)"
    whole = _decode(video, Limits(max_duration_s=8.5))
    assert whole.ok and whole.probe.duration_s == 2.0 and abs(len(whole.audio) - 8 * 16000) < 1600


def test_limits_come_from_the_config_file_and_leave_the_fingerprint_alone(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("limits: {max_pixels: 2000000, max_duration_s: 600}\n")
    loaded = load_config("in", "out", "tiny", str(config))
    assert loaded.limits == Limits(max_pixels=2_000_000, max_duration_s=600)
    assert load_config("in", "out").limits == Limits(max_pixels=8192 * 4320, max_duration_s=6 * 3600)
    assert loaded.fingerprint() == load_config("in", "out").fingerprint()
    config.write_text("limits: {max_seconds: 600}\n")
    with pytest.raises(ConfigError, match="unknown key.*in limits: max_seconds"):
        load_config("in", "out", "tiny", str(config))
    with pytest.raises(ConfigError, match="limits.max_duration_s must be > 0"):
        Limits(max_duration_s=0)
