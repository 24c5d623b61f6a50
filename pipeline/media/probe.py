"""What a video file holds: streams and codecs from ``ffmpeg -i``, frame count and true timing from decord.

There is no ffprobe here, so the stream dump ffmpeg prints when it is given only an input is parsed. decord
supplies the per-frame presentation timestamps, which stay right for variable frame rate where
``get_avg_fps`` does not. decord (this build) also applies the display-matrix rotation itself: frames come
out upright and ``width``/``height`` arguments name the upright size.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass

from pipeline.media.ffmpeg import MediaError, last_error_line, run_args
from pipeline.media.reader import open_video

__all__ = ["MediaError", "ProbeResult", "probe"]

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 60.0
_NOT_VIDEO_FORMATS = {"tty": "looks like text", "image2": "a still image"}


@dataclass(frozen=True)
class ProbeResult:
    duration_s: float
    width: int  # display size: sample aspect ratio and rotation applied
    height: int
    fps: float  # mean rate over the true frame timestamps (right for variable frame rate)
    num_frames: int
    codec: str | None
    has_audio: bool
    rotation: int  # clockwise degrees a player turns the coded picture: 0, 90, 180 or 270
    audio_codec: str | None
    audio_sample_rate: int | None


@dataclass(frozen=True)
class _Streams:
    """The parts of ffmpeg's stream dump that probe needs."""

    video_codec: str
    coded_width: int
    coded_height: int
    sar: float
    rotation: int
    audio_codec: str | None
    audio_sample_rate: int | None


def probe(path: str) -> ProbeResult:
    """Describe a local video file; raises MediaError with a one-line reason when it is not a usable video."""
    streams = _read_streams(path)
    with open_video(path) as open_reader:
        vr = open_reader((32, 32))  # frames are not looked at: the smallest size is the cheapest check
        num_frames = len(vr)
        stamps = vr.get_frame_timestamp([0, num_frames - 1])
    first_start, last_start, last_end = float(stamps[0, 0]), float(stamps[1, 0]), float(stamps[1, 1])
    # The video stream's own length; container durations are estimates in some formats (AVI) and include
    # longer audio in others. decord's timestamps are float32: microseconds and below are noise.
    duration = round(last_end - first_start, 6)
    span = last_start - first_start
    # Mean interval between frame starts: needs no guess at how long the last frame lasts.
    fps = round((num_frames - 1) / span, 3) if num_frames > 1 and span > 0 else 0.0
    width = max(1, round(streams.coded_width * streams.sar))
    height = streams.coded_height
    if streams.rotation in (90, 270):
        width, height = height, width
    return ProbeResult(
        duration_s=duration,
        width=width,
        height=height,
        fps=fps,
        num_frames=num_frames,
        codec=streams.video_codec,
        has_audio=streams.audio_codec is not None,
        rotation=streams.rotation,
        audio_codec=streams.audio_codec,
        audio_sample_rate=streams.audio_sample_rate,
    )


def _read_streams(path: str) -> _Streams:
    if not os.path.exists(path):
        raise MediaError(f"file not found: {path}")
    if os.path.getsize(path) == 0:
        raise MediaError("empty file (0 bytes)")
    _, stderr, _ = run_args(["-i", path], timeout=PROBE_TIMEOUT_S)  # exits 1 by design: no output given
    text = stderr.decode("utf-8", "replace")
    if "Error opening input" in text or "Input #0" not in text:
        if "moov atom not found" in text:
            raise MediaError("cannot decode: moov atom not found (truncated mp4, or not a video)")
        raise MediaError(f"not a video: {_opening_reason(text)}")
    fmt = re.search(r"Input #0, ([\w,]+), from", text)
    fmt_name = fmt.group(1) if fmt else ""
    if fmt_name in _NOT_VIDEO_FORMATS or fmt_name.endswith("_pipe"):
        raise MediaError(f"not a video: {_NOT_VIDEO_FORMATS.get(fmt_name, 'a still image')} ({fmt_name})")
    video = audio = None
    for block in re.split(r"\n(?=\s*Stream #)", text)[1:]:
        kind = re.match(r"\s*Stream #\d+:\d+\S*: (Video|Audio): (\w+)", block)
        if not kind:
            continue
        # Cover art in audio files shows up as a one-frame video stream.
        if kind.group(1) == "Video" and video is None and "(attached pic)" not in block:
            video = (kind.group(2), block)
        elif kind.group(1) == "Audio" and audio is None:
            audio = (kind.group(2), block)
    if video is None:
        raise MediaError("not a video: no video stream")
    size = re.search(r"\b([1-9]\d*)x([1-9]\d*)\b", video[1])
    if not size:
        raise MediaError(f"not a video: no picture size in the {video[0]} stream")
    rate = re.search(r"(\d+) Hz", audio[1]) if audio else None
    return _Streams(
        video_codec=video[0],
        coded_width=int(size.group(1)),
        coded_height=int(size.group(2)),
        sar=_sample_aspect(video[1]),
        rotation=_rotation(video[1]),
        audio_codec=audio[0] if audio else None,
        audio_sample_rate=int(rate.group(1)) if rate else None,
    )


def _opening_reason(text: str) -> str:
    match = re.search(r"Error opening input files?: (.+)", text)
    return match.group(1).strip() if match else last_error_line(text)


def _rotation(block: str) -> int:
    # ffmpeg prints the display matrix's counter-clockwise angle ("rotation of -90.00 degrees" on a phone
    # video shot upright); a player turns the picture the other way, clockwise by 90.
    matrix = re.search(r"display ?matrix: rotation of (-?\d+(?:\.\d+)?) degrees", block, re.IGNORECASE)
    if matrix:
        return round(-float(matrix.group(1)) / 90) * 90 % 360
    return 0


def _sample_aspect(block: str) -> float:
    sar = re.search(r"\[SAR (\d+):(\d+)", block)
    if sar and int(sar.group(1)) > 0 and int(sar.group(2)) > 0:
        return int(sar.group(1)) / int(sar.group(2))
    return 1.0
