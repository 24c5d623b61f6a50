"""What a video file holds: streams and codecs from ``ffmpeg -i``, frame count and true timing from decord.

There is no ffprobe here, so the stream dump ffmpeg prints when it is given only an input is parsed. decord
supplies the per-frame presentation timestamps, which stay right for variable frame rate where
``get_avg_fps`` does not. decord (this build) also applies the display-matrix rotation itself: frames come
out upright and ``width``/``height`` arguments name the upright size.

A pixel budget is checked on the stream dump, before any frame is decoded: decoders make full-size frames
whatever size is asked of decord (a 16000x16000 H.264 frame took 3.8 GB), so a larger picture is decoded at
a fraction of its size by the codecs that can do that, and refused by the others.
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
    # Halvings of each side the decoder applies (ffmpeg's ``lowres``) to stay within the pixel budget;
    # readers of the frames pass it to ``open_video``.
    decode_lowres: int = 0


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


def probe(path: str, max_pixels: int | None = None) -> ProbeResult:
    """Describe a local video file; raises MediaError with a one-line reason when it is not a usable video,
    or when its picture is over ``max_pixels`` and cannot be decoded smaller."""
    streams = _read_streams(path, max_pixels)
    lowres = _lowres_within(streams, max_pixels) if max_pixels else 0
    with open_video(path, lowres) as open_reader:
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
        decode_lowres=lowres,
    )


# Decoders that can make frames at 1/2, 1/4 or 1/8 size directly (ffmpeg's ``lowres``), as ffmpeg's stream
# dump names them; the others (H.264, HEVC, VP9, AV1...) always make full-size frames.
_LOWRES_CODECS = frozenset({"mjpeg", "mpeg1video", "mpeg2video", "mpeg4", "jpeg2000"})
_MAX_LOWRES = 3


def _lowres_within(streams: _Streams, max_pixels: int) -> int:
    """The fewest halvings that bring the coded picture within ``max_pixels``; MediaError when none can."""
    width, height = streams.coded_width, streams.coded_height
    if width * height <= max_pixels:
        return 0
    over = (
        f"picture {width}x{height} ({width * height / 1e6:.1f} Mpx) is over limits.max_pixels "
        f"({max_pixels / 1e6:.1f} Mpx)"
    )
    if streams.video_codec not in _LOWRES_CODECS:
        raise MediaError(f"{over}, and {streams.video_codec} cannot be decoded at a smaller size")
    for lowres in range(1, _MAX_LOWRES + 1):
        if -(-width >> lowres) * -(-height >> lowres) <= max_pixels:
            return lowres
    raise MediaError(f"{over} even decoded at 1/{2**_MAX_LOWRES} size")


def _read_streams(path: str, max_pixels: int | None = None) -> _Streams:
    if not os.path.exists(path):
        raise MediaError(f"file not found: {path}")
    if os.path.getsize(path) == 0:
        raise MediaError("empty file (0 bytes)")
    # ffmpeg decodes a frame or two to fill in what headers leave out; ``max_pixels`` makes its decoder
    # refuse a picture over the budget rather than make it.
    text = _stream_dump(path, ["-max_pixels", str(max_pixels)] if max_pixels else [])
    if "Error opening input" in text or "Input #0" not in text:
        if "moov atom not found" in text:
            raise MediaError("cannot decode: moov atom not found (truncated mp4, or not a video)")
        raise MediaError(f"not a video: {_opening_reason(text)}")
    fmt = re.search(r"Input #0, ([\w,]+), from", text)
    fmt_name = fmt.group(1) if fmt else ""
    if fmt_name in _NOT_VIDEO_FORMATS or fmt_name.endswith("_pipe"):
        raise MediaError(f"not a video: {_NOT_VIDEO_FORMATS.get(fmt_name, 'a still image')} ({fmt_name})")
    video, audio = _first_streams(text)
    if video is None:
        raise MediaError("not a video: no video stream")
    size = _picture_size(video[1])
    if not size and max_pixels:
        # Some decoders (MJPEG) forget the size of a picture they refused; the headers alone still hold it.
        video = _first_streams(_stream_dump(path, ["-skip_frame", "all"]))[0] or video
        size = _picture_size(video[1])
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


def _stream_dump(path: str, input_options: list[str]) -> str:
    _, stderr, _ = run_args([*input_options, "-i", path], timeout=PROBE_TIMEOUT_S)  # exits 1: no output given
    return stderr.decode("utf-8", "replace")


def _first_streams(text: str) -> tuple[tuple[str, str] | None, tuple[str, str] | None]:
    """(codec, dump block) of the first video stream and of the first audio stream, each None when absent."""
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
    return video, audio


def _picture_size(block: str) -> re.Match | None:
    return re.search(r"\b([1-9]\d*)x([1-9]\d*)\b", block)


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
