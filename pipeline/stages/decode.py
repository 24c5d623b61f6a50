"""MediaDecoder: fetch a video, probe it, pick keyframes and decode its audio (CPU, no models).

The per-video limits (``Limits``) are applied before the work they bound: the pixel budget by ``probe`` from
the stream headers, the duration between probing and decoding anything.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

import fsspec

from pipeline.config import KeyframeSettings, Limits, Resources
from pipeline.discover import input_problem
from pipeline.media.audio import extract_audio
from pipeline.media.keyframes import extract_keyframes
from pipeline.media.probe import MediaError, ProbeResult, probe
from pipeline.stages.base import Stage
from pipeline.task import FrameRecord, VideoTask


@contextlib.contextmanager
def local_copy(uri: str, storage_options: Mapping[str, Any]) -> Iterator[str]:
    """A local path for the URI: the file itself when local, else a temporary download removed afterwards."""
    fs, path = fsspec.core.url_to_fs(uri, **dict(storage_options))
    if "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
        yield path
        return
    suffix = os.path.splitext(path)[1]
    with tempfile.NamedTemporaryFile(suffix=suffix, prefix="reelscope-") as tmp:
        fs.get_file(path, tmp.name)
        yield tmp.name


@dataclass
class MediaDecoder(Stage):
    name: str = "decode"
    resources: Resources = field(default_factory=lambda: Resources(cpus=0.5))
    batch_size: int = 1
    keyframes: KeyframeSettings = field(default_factory=KeyframeSettings)
    limits: Limits = field(default_factory=Limits)
    storage_options: Mapping[str, Any] = field(default_factory=dict)

    def process(self, tasks: list[VideoTask]) -> None:
        for task in tasks:
            try:
                self._decode(task)
            except Exception as exc:
                task.fail(self.name, exc)

    def _decode(self, task: VideoTask) -> None:
        if task.input_fingerprint == "missing":
            raise MediaError(f"listed in the manifest but not found: {task.uri}")
        problem = input_problem(task.input_fingerprint)  # a FIFO, a device, a symlink loop...: never read
        if problem:
            raise MediaError(problem)
        if task.size == 0:
            # Decoders report an empty file in unhelpful ways; say it plainly.
            raise MediaError("empty file (0 bytes)")
        with local_copy(task.uri, self.storage_options) as path:
            info = probe(path, self.limits.max_pixels)
            _check_duration(info, self.limits.max_duration_s)
            task.probe = info
            task.frames = [
                FrameRecord(k.frame_index, k.timestamp_s, k.jpeg, k.width, k.height, k.scene_score)
                for k in extract_keyframes(path, self.keyframes, info)
            ]
            task.audio = extract_audio(path, info, self.limits.max_duration_s) if info.has_audio else None


def _check_duration(info: ProbeResult, max_duration_s: float) -> None:
    if info.duration_s > max_duration_s:
        raise MediaError(
            f"video is {info.duration_s:.1f} s long, over limits.max_duration_s ({max_duration_s:g} s)"
        )
