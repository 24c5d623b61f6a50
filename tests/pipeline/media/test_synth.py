"""synth: the test media are what they claim to be, and repeatable."""
from __future__ import annotations

import decord
import pytest

from pipeline.media.probe import probe
from pipeline.media.synth import make_video, write_samples


def test_scene_cuts_stay_inside_one_gop(rgb_video):
    # The point of the large GOP: codec keyframes say nothing about where the scenes change.
    assert decord.VideoReader(str(rgb_video)).get_key_indices() == [0]


def test_hex_colours_and_nested_output_folder(tmp_path):
    path = make_video(tmp_path / "a" / "b" / "orange.mp4", [("#ff8000", 0.4)], fps=10, size=(32, 24))
    frame = decord.VideoReader(str(path))[0].asnumpy()[12, 16].astype(int)
    assert abs(frame[0] - 255) < 8 and abs(frame[1] - 128) < 8 and frame[2] < 8
    assert probe(str(path)).num_frames == 4


def test_same_inputs_give_the_same_bytes(tmp_path):
    a = make_video(tmp_path / "a.mp4", [("red", 0.5), ("blue", 0.5)], size=(64, 48), tone_hz=300.0)
    b = make_video(tmp_path / "b.mp4", [("red", 0.5), ("blue", 0.5)], size=(64, 48), tone_hz=300.0)
    assert a.read_bytes() == b.read_bytes()


def test_rotation_must_be_a_right_angle(tmp_path):
    with pytest.raises(ValueError, match="multiple of 90"):
        make_video(tmp_path / "x.mp4", [("red", 1.0)], rotate=45)


def test_samples_are_short_and_probe_cleanly(tmp_path):
    paths = write_samples(tmp_path / "samples")
    infos = {p.name: probe(str(p)) for p in paths}
    assert len(infos) >= 3
    assert all(0 < info.duration_s <= 8 and max(info.width, info.height) <= 320 for info in infos.values())
    assert any(info.has_audio for info in infos.values()) and not all(info.has_audio for info in infos.values())
    assert any(info.rotation for info in infos.values())
