"""extract_keyframes on videos with known cuts: inside one GOP, off the sampling grid, at a variable rate."""
from __future__ import annotations

import io

import ffmpeg
import numpy as np
import pytest
from PIL import Image

from pipeline.config import KeyframeSettings
from pipeline.media import ffmpeg as ff
from pipeline.media.keyframes import extract_keyframes
from pipeline.media.probe import MediaError, probe
from pipeline.media.synth import make_video


def pixels(jpeg: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")).astype(np.int16)


def centre_colour(jpeg: bytes) -> tuple[int, ...]:
    image = pixels(jpeg)
    return tuple(int(v) for v in image[image.shape[0] // 2, image.shape[1] // 2])


def test_cuts_inside_one_gop_are_found_at_the_exact_frame(rgb_video):
    keyframes = extract_keyframes(str(rgb_video), KeyframeSettings())
    assert [k.frame_index for k in keyframes] == [0, 50, 100]
    assert [k.timestamp_s for k in keyframes] == pytest.approx([0.0, 2.0, 4.0], abs=0.04)
    assert keyframes[0].scene_score == 1.0
    assert all(k.scene_score >= 0.3 for k in keyframes[1:])
    expected = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    for keyframe, colour in zip(keyframes, expected):
        assert (keyframe.width, keyframe.height) == (320, 240)
        assert np.abs(np.subtract(centre_colour(keyframe.jpeg), colour)).max() < 12


def test_cut_between_samples_is_refined_to_its_first_frame(levels_video):
    # Cuts at 1.4, 2.8 and 4.2 s (frames 35, 70, 105) fall between the 0.25 s samples.
    keyframes = extract_keyframes(str(levels_video), KeyframeSettings())
    assert [k.frame_index for k in keyframes] == [0, 35, 70, 105]
    assert [k.timestamp_s for k in keyframes] == pytest.approx([0.0, 1.4, 2.8, 4.2], abs=1e-3)
    assert [round(k.scene_score, 1) for k in keyframes] == [1.0, 1.0, 0.6, 0.4]


def test_threshold_drops_weak_changes(levels_video):
    keyframes = extract_keyframes(str(levels_video), KeyframeSettings(scene_threshold=0.5))
    assert [k.frame_index for k in keyframes] == [0, 35, 70]


def test_max_keyframes_keeps_first_and_strongest(levels_video):
    keyframes = extract_keyframes(str(levels_video), KeyframeSettings(max_keyframes=2))
    assert [k.frame_index for k in keyframes] == [0, 35]
    keyframes = extract_keyframes(str(levels_video), KeyframeSettings(max_keyframes=3))
    assert [k.frame_index for k in keyframes] == [0, 35, 70]


def test_min_spacing_suppresses_a_cut_too_soon(media_dir):
    path = make_video(media_dir / "quick.mp4", [("red", 2.0), ("lime", 0.5), ("blue", 2.0)], size=(64, 48))
    spaced = extract_keyframes(str(path), KeyframeSettings(min_spacing_s=1.0))
    assert [k.timestamp_s for k in spaced] == pytest.approx([0.0, 2.0], abs=0.04)
    close = extract_keyframes(str(path), KeyframeSettings(min_spacing_s=0.2))
    assert [k.timestamp_s for k in close] == pytest.approx([0.0, 2.0, 2.5], abs=0.04)


def test_variable_frame_rate_timestamps_are_true_presentation_times(vfr_video):
    keyframes = extract_keyframes(str(vfr_video), KeyframeSettings())
    assert [k.frame_index for k in keyframes] == [0, 10, 49]
    # A frame-index / average-fps estimate would put frame 10 at about 0.5 s, not 2.0 s.
    assert [k.timestamp_s for k in keyframes] == pytest.approx([0.0, 2.0, 3.3], abs=1e-3)


def test_jpeg_is_scaled_to_max_side_with_quality(rgb_video):
    small = extract_keyframes(str(rgb_video), KeyframeSettings(max_side=128, jpeg_quality=30))
    assert [(k.width, k.height) for k in small] == [(128, 96)] * 3
    for k in small:
        assert Image.open(io.BytesIO(k.jpeg)).size == (128, 96)
    best = extract_keyframes(str(rgb_video), KeyframeSettings(max_side=128, jpeg_quality=100))
    assert len(best[0].jpeg) > len(small[0].jpeg)


def test_rotated_video_is_stored_upright(rotated_video):
    info = probe(str(rotated_video))
    (keyframe,) = extract_keyframes(str(rotated_video), KeyframeSettings(), info)
    assert (keyframe.width, keyframe.height) == (240, 320)
    # ffmpeg applies the display matrix when decoding; the stored picture must match what it shows.
    raw = ff.run(ffmpeg.input(str(rotated_video)).output("pipe:1", vframes=1, format="rawvideo", pix_fmt="rgb24"))
    shown = np.frombuffer(raw, np.uint8).reshape(320, 240, 3).astype(np.int16)
    stored = pixels(keyframe.jpeg)
    assert np.abs(stored - shown).mean() < 8
    assert np.abs(stored - np.rot90(shown, 2)).mean() > 30  # and the check can tell upside down


def test_broken_input_raises_media_error(broken_files):
    with pytest.raises(MediaError):
        extract_keyframes(str(broken_files["random"]), KeyframeSettings())


def test_mpeg_ts_with_b_frames(rgb_remuxed):
    keyframes = extract_keyframes(str(rgb_remuxed(".ts")), KeyframeSettings())
    assert [k.frame_index for k in keyframes] == [0, 50, 100]


def test_anamorphic_video_is_stored_at_display_aspect(rgb_remuxed):
    path = rgb_remuxed(".mp4", **{"bsf:v": "h264_metadata=sample_aspect_ratio=2/1"})
    keyframes = extract_keyframes(str(path), KeyframeSettings(max_side=512))
    assert {(k.width, k.height) for k in keyframes} == {(512, 192)}


@pytest.mark.parametrize("size, max_side, stored", [((48, 36), 512, (47, 36)), ((320, 240), 96, (96, 72))])
def test_widths_decord_mishandles_are_avoided(media_dir, size, max_side, stored):
    # decord 0.6.0 fails on 48- and 72-pixel-wide output (among others); one pixel narrower works.
    path = make_video(media_dir / f"narrow-{size[0]}.mp4", [("red", 0.5), ("blue", 0.5)], size=size)
    keyframes = extract_keyframes(str(path), KeyframeSettings(max_side=max_side, min_spacing_s=0.2))
    assert [k.frame_index for k in keyframes] == [0, 13]
    assert (keyframes[0].width, keyframes[0].height) == stored
