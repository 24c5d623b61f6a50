"""decord readers that cope with the containers and widths decord 0.6.0 gets wrong."""
from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
from typing import Callable, Iterator

import decord
import ffmpeg

from pipeline.media.ffmpeg import MediaError, run

log = logging.getLogger(__name__)

# decord otherwise prints ffmpeg's complaints about every bad input to stderr; its exceptions carry the cause.
decord.logging.set_level(decord.logging.QUIET)


@contextlib.contextmanager
def open_video(path: str, lowres: int = 0) -> Iterator[Callable[[tuple[int, int]], decord.VideoReader]]:
    """``open_reader(size)``: decord readers of ``path`` giving upright frames of ``size`` = (width, height).

    decord seeks MPEG-TS so slowly it looks hung, invents timestamps for AVI, and cannot count frames in
    containers that store neither a frame count nor an average rate (raw H.264, variable-frame-rate
    Matroska). Copying the video stream, without re-encoding, into a temporary MOV cures all of these, so
    anything but MP4/MOV and Matroska is remuxed up front, and Matroska when decord fails on it.

    ``lowres`` > 0: the picture is too large to decode at full size (``probe`` decides), so it is first
    decoded at 1/2**lowres size into a temporary MOV (see ``_shrink``) and decord reads that instead.
    """
    with contextlib.ExitStack() as stack:
        source = _shrink(path, lowres, stack) if lowres else path
        if source == path and not _decord_reads_well(path):
            try:
                source = _remux(path, stack)
            except MediaError as exc:
                log.info("%s: remux failed (%s); decord reads it as it is", path, exc)

        def open_reader(size: tuple[int, int]) -> decord.VideoReader:
            nonlocal source
            try:
                return _checked_reader(source, _decord_safe_width(size[0]), size[1])
            except _NeedsRemux as failure:
                if source != path:
                    raise MediaError(f"cannot decode: {failure}") from None
                log.info("%s: decord cannot read it as it is (%s); remuxing", path, failure)
                source = _remux(path, stack)
                return open_reader(size)

        yield open_reader


def _decord_reads_well(path: str) -> bool:
    with open(path, "rb") as f:
        head = f.read(12)
    is_mov = head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip")
    return is_mov or head[:4] == b"\x1a\x45\xdf\xa3"  # Matroska / WebM (EBML) magic


def _remux(path: str, stack: contextlib.ExitStack) -> str:
    target = _temporary_mov(stack)
    run(ffmpeg.input(path).output(target, map="0:v:0", c="copy"), what="cannot decode")
    return target


def _shrink(path: str, lowres: int, stack: contextlib.ExitStack) -> str:
    """The video stream decoded at 1/2**lowres size (the decoder's own ``lowres``: no full-size frame is
    ever made) and stored as near-lossless MJPEG, every frame at its original presentation time."""
    target = _temporary_mov(stack)
    stream = ffmpeg.input(path, lowres=lowres).output(
        target, map="0:v:0", vcodec="mjpeg", **{"q:v": 2}, fps_mode="passthrough", copyts=None,
    )
    run(stream, what="cannot decode")
    log.info("%s: decoded at 1/%d size to stay within the pixel budget", path, 2**lowres)
    return target


def _temporary_mov(stack: contextlib.ExitStack) -> str:
    return os.path.join(stack.enter_context(tempfile.TemporaryDirectory(prefix="reelscope-")), "video.mov")


# decord 0.6.0 hands back frames of these widths with 4 bytes a pixel and then fails to copy them
# ("DECORDArrayCopyFromTo: The size must exactly match"), whether scaled or native. Found by trying every
# width from 1 to 1399; the height does not matter.
_DECORD_BAD_WIDTHS = frozenset({1, 2, 3, 4, 6, 8, 12, 16, 24, 48, 72})


def _decord_safe_width(width: int) -> int:
    """The nearest width decord decodes correctly, narrower if possible (so a long side never grows)."""
    while width in _DECORD_BAD_WIDTHS:
        width = width - 1 if width > 5 else width + 1
    return width


class _NeedsRemux(Exception):
    """decord failed in a way known to come from the container rather than the picture data."""


# Substrings of decord errors that a remux cures; anything else (truncated or corrupt data) is final.
_REMUX_CURES = ("Failed to measure duration/frame-count", "Unable to handle EOF")


def _checked_reader(path: str, width: int, height: int) -> decord.VideoReader:
    # Decoding frame 0 as well as opening: headers can be intact while the data is not (a cut-off download).
    try:
        reader = decord.VideoReader(path, ctx=decord.cpu(0), width=width, height=height)
        reader[0]
    except (decord.DECORDError, RuntimeError, AssertionError) as exc:
        reason = _decord_reason(exc)
        if any(cure in str(exc) for cure in _REMUX_CURES):
            raise _NeedsRemux(reason) from None
        raise MediaError(f"cannot decode: {reason}") from None
    return reader


def _decord_reason(exc: BaseException) -> str:
    """decord's first message line without its ``[time] /src/file.cc:123:`` prefix."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    first = lines[0] if lines else exc.__class__.__name__
    first = re.sub(r"^\[[\d:]+\] \S+:\d+: ", "", first)
    if "av_read_frame failed" in first:
        return f"truncated or corrupt data ({first})"
    return first
