"""The unit that flows through the stages: one video and everything learnt about it so far."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class FrameRecord:
    frame_index: int
    timestamp_s: float
    jpeg: bytes
    width: int
    height: int
    scene_score: float
    caption: str | None = None
    embedding: np.ndarray | None = None


@dataclass
class VideoTask:
    video_id: str
    uri: str
    input_fingerprint: str
    size: int | None
    error: str | None = None  # "stage: message"; once set, later stages pass the task through untouched
    probe: Any = None  # pipeline.media.probe.ProbeResult
    frames: list[FrameRecord] = field(default_factory=list)
    audio: np.ndarray | None = None  # freed by the transcriber
    language: str | None = None
    segments: list[Any] = field(default_factory=list)  # pipeline.models.whisper.TranscriptSegment
    summary: Any = None  # pipeline.summarize.SummaryResult
    models: dict[str, str] = field(default_factory=dict)  # role -> model name actually used
    seconds: dict[str, float] = field(default_factory=dict)  # stage -> wall seconds spent on this task

    @property
    def ok(self) -> bool:
        return self.error is None

    def fail(self, stage: str, exc: BaseException | str) -> None:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        if isinstance(exc, BaseException) and exc.__class__.__name__ not in message:
            message = f"{exc.__class__.__name__}: {message}" if not _is_user_error(exc) else message
        self.error = f"{stage}: {message}"
        self.frames = []
        self.audio = None


def _is_user_error(exc: BaseException) -> bool:
    # MediaError messages are written for people already; other exceptions keep their type for debugging.
    return exc.__class__.__name__ == "MediaError"
