"""Scene-aware keyframes: where the picture changes, at the true presentation time, as JPEG.

Two passes with decord. The scan decodes frames sampled every ``1 / sample_fps`` seconds of presentation
time (so variable frame rate works), scaled down to a thumbnail, and scores each sample by its mean absolute
difference from the one before (0..1). Codec keyframes are not used: scene cuts fall inside GOPs.
The second pass decodes, at JPEG size, only the frames between the two samples around each chosen change
and moves the keyframe to the largest frame-to-frame change there: the first frame of the new scene.
"""
from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import Iterator, Sequence

import decord
import numpy as np
from PIL import Image

from pipeline.config import KeyframeSettings
from pipeline.media.probe import ProbeResult, probe
from pipeline.media.reader import open_video

log = logging.getLogger(__name__)

SCAN_SIDE = 64  # long side of the scan thumbnails: enough to see a cut, cheap to scale to
_BATCH = 32  # frames per decord call: bounds memory however long the video


@dataclass(frozen=True)
class Keyframe:
    frame_index: int
    timestamp_s: float  # presentation time of the frame (decord's frame timestamp, right for VFR)
    jpeg: bytes
    width: int  # of the stored JPEG: upright, long side <= settings.max_side
    height: int
    scene_score: float  # the difference that made it a keyframe; 1.0 for the first frame


@dataclass(frozen=True)
class _Change:
    before: int  # frame index of the last sample of the old scene
    after: int  # frame index of the first sample of the new one
    score: float


def extract_keyframes(
    path: str, settings: KeyframeSettings, probe_result: ProbeResult | None = None
) -> list[Keyframe]:
    info = probe_result or probe(path)
    with open_video(path, info.decode_lowres) as open_reader:
        scan_reader = open_reader(_fit(info.width, info.height, SCAN_SIDE))
        starts, samples, scores = _scan(scan_reader, settings.sample_fps)
        del scan_reader  # its decoder and buffers go before the JPEG-size reader's arrive
        changes = _select(samples, starts, scores, settings)
        vr = open_reader(_fit(info.width, info.height, settings.max_side))
        keyframes = []
        for change in changes:
            index, frame = _first_frame_after(vr, change)
            keyframes.append(_keyframe(index, starts[index], frame, change.score, settings.jpeg_quality))
    log.debug("%s: %d keyframes from %d samples of %d frames", path, len(keyframes), len(samples), len(starts))
    return keyframes


def _fit(width: int, height: int, side: int) -> tuple[int, int]:
    """Size with the long side at most ``side``, aspect kept."""
    scale = min(1.0, side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _sample_indices(starts: np.ndarray, sample_fps: float) -> np.ndarray:
    """The first frame at or after each tick of a ``sample_fps`` clock in presentation time."""
    ticks = np.arange(starts[0], starts[-1] + 1e-9, 1.0 / sample_fps)
    # 1 ms of slack: decord's float32 timestamps put a frame due at 2.0 s at 1.9999999.
    return np.unique(np.searchsorted(starts, ticks - 1e-3).clip(0, len(starts) - 1))


def _scan(vr: decord.VideoReader, sample_fps: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frame start times, the sampled frame indices, and each sample's score against the previous one
    (the first sample scores 1.0)."""
    starts = vr.get_frame_timestamp(range(len(vr)))[:, 0].astype(np.float64)
    samples = _sample_indices(starts, sample_fps)
    scores = np.ones(len(samples), dtype=np.float64)
    previous = None
    for offset, frames in _batches(vr, samples.tolist()):
        for i, frame in enumerate(frames, start=offset):
            if previous is not None:
                scores[i] = _difference(previous, frame)
            previous = frame
    return starts, samples, scores


def _select(samples: np.ndarray, starts: np.ndarray, scores: np.ndarray, s: KeyframeSettings) -> list[_Change]:
    """The first sample, then each sample scoring at least the threshold and at least ``min_spacing_s``
    (in sample times) after the last one kept; over ``max_keyframes``, the first and the strongest."""
    changes = [_Change(before=int(samples[0]), after=int(samples[0]), score=1.0)]
    last_time = starts[samples[0]]
    for i in range(1, len(samples)):
        time = starts[samples[i]]
        if scores[i] >= s.scene_threshold and time - last_time >= s.min_spacing_s:
            changes.append(_Change(before=int(samples[i - 1]), after=int(samples[i]), score=float(scores[i])))
            last_time = time
    if len(changes) > s.max_keyframes:
        strongest = sorted(changes[1:], key=lambda c: -c.score)[: s.max_keyframes - 1]
        changes = [changes[0], *sorted(strongest, key=lambda c: c.after)]
    return changes


def _first_frame_after(vr: decord.VideoReader, change: _Change) -> tuple[int, np.ndarray]:
    """The frame in (before, after] that differs most from its predecessor, i.e. where the cut is."""
    if change.after == change.before:
        return change.after, vr[change.after].asnumpy()
    best_index, best_frame, best_score = change.after, None, -1.0
    previous = None
    for offset, frames in _batches(vr, list(range(change.before, change.after + 1))):
        for i, frame in enumerate(frames, start=change.before + offset):
            if previous is not None and (score := _difference(previous, frame)) > best_score:
                best_index, best_frame, best_score = i, frame.copy(), score
            previous = frame
    return best_index, best_frame


def _keyframe(index: int, start: float, frame: np.ndarray, score: float, quality: int) -> Keyframe:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=quality)
    # decord's timestamps are float32: rounding to the microsecond drops noise, not information.
    return Keyframe(index, round(float(start), 6), buf.getvalue(), frame.shape[1], frame.shape[0], score)


def _batches(vr: decord.VideoReader, indices: Sequence[int]) -> Iterator[tuple[int, np.ndarray]]:
    for offset in range(0, len(indices), _BATCH):
        yield offset, vr.get_batch(list(indices[offset : offset + _BATCH])).asnumpy()


def _difference(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two RGB frames, 0 (same) .. 1 (black vs white)."""
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean()) / 255.0
