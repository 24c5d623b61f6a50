"""Running the ffmpeg binary that imageio-ffmpeg ships (there is no ffprobe), via ffmpeg-python.

Every call goes through ``run`` so that a failure becomes a one-line ``MediaError`` and a stuck process
is killed after a time limit instead of hanging a worker.
"""
from __future__ import annotations

import functools
import logging
import subprocess

import ffmpeg
import imageio_ffmpeg

log = logging.getLogger(__name__)


class MediaError(Exception):
    """A media file cannot be used; the message is one readable line (``not a video: no video stream``)."""


@functools.cache
def ffmpeg_exe() -> str:
    return imageio_ffmpeg.get_ffmpeg_exe()


def last_error_line(stderr: bytes | str) -> str:
    """The most telling line of ffmpeg's stderr: its last non-empty one (ffmpeg ends with the cause)."""
    text = stderr.decode("utf-8", "replace") if isinstance(stderr, bytes) else stderr
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "ffmpeg failed without a message"


def run_args(args: list[str], *, timeout: float | None = None, stdin: bytes | None = None) -> tuple[bytes, bytes, int]:
    """Run ffmpeg with raw arguments (``stdin`` fed to ``pipe:0``); returns (stdout, stderr, exit code).
    Raises MediaError on timeout."""
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", *args]
    log.debug("ffmpeg: %s", " ".join(cmd))
    try:
        done = subprocess.run(
            cmd, input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL, capture_output=True,
            timeout=timeout, check=False,
        )
    except subprocess.TimeoutExpired:
        raise MediaError(f"ffmpeg gave no answer within {timeout:.0f} s") from None
    return done.stdout, done.stderr, done.returncode


def run(stream, *, timeout: float | None = None, what: str = "ffmpeg") -> bytes:
    """Run an ffmpeg-python stream graph; returns stdout. A non-zero exit raises ``MediaError(what: cause)``."""
    # Errors only on stderr: its last line is then the cause, and an hour of progress lines is not kept.
    args = ["-loglevel", "error", *ffmpeg.compile(stream, cmd=ffmpeg_exe(), overwrite_output=True)[1:]]
    stdout, stderr, code = run_args(args, timeout=timeout)
    if code != 0:
        raise MediaError(f"{what}: {last_error_line(stderr)}")
    return stdout
