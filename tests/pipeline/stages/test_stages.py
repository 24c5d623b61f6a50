"""Stages on their own (no Ray): real media, tiny models, errors recorded per task."""
from __future__ import annotations

import copy

import numpy as np
import pytest

from pipeline.config import load_config
from pipeline.stages.decode import MediaDecoder
from pipeline.stages.caption import Blip2Captioner
from pipeline.stages.embed import ClipEmbedder
from pipeline.stages.summarize import LlmSummarizer
from pipeline.stages.transcribe import WhisperTranscriber
from pipeline.task import VideoTask


@pytest.fixture(scope="module")
def decoded(tmp_path_factory):
    from pipeline.media.synth import make_video

    d = tmp_path_factory.mktemp("stage-media")
    good = make_video(d / "good.mp4", [("red", 1.5), ("blue", 1.5)], tone_hz=330.0)
    bad = d / "bad.mp4"
    bad.write_bytes(b"\x00" * 4096)
    tasks = [
        VideoTask("good", f"file://{good}", "fp", good.stat().st_size),
        VideoTask("bad", f"file://{bad}", "fp", 4096),
    ]
    return MediaDecoder().process_batch(tasks)


def _stage(cls, model_cache, role):
    cfg = load_config("in", "out", "tiny", cache_dir=model_cache)
    stage = cls(spec=getattr(cfg.models, role), cache_dir=model_cache)
    stage.setup("cpu")
    return stage


def test_decoder_fills_tasks_and_records_failures(decoded):
    good, bad = decoded
    assert good.ok and len(good.frames) == 2 and good.probe.has_audio
    assert good.audio.dtype == np.float32 and abs(len(good.audio) - 48_000) < 800
    assert not bad.ok and bad.error.startswith("decode: ") and bad.frames == [] and bad.audio is None
    assert "decode" in good.seconds


def test_model_stages_skip_failed_tasks_and_fill_ok_ones(decoded, model_cache):
    good, bad = copy.deepcopy(decoded)
    tasks = [good, bad]
    WhisperTranscriber.process_batch(_stage(WhisperTranscriber, model_cache, "asr"), tasks)
    assert good.audio is None and good.models["asr"] == "tiny:whisper"
    assert all(0 <= s.start_s <= s.end_s <= 3.1 for s in good.segments)
    _stage(Blip2Captioner, model_cache, "caption").process_batch(tasks)
    _stage(ClipEmbedder, model_cache, "embedding").process_batch(tasks)
    assert all(isinstance(f.caption, str) for f in good.frames)
    assert all(f.embedding.shape == good.frames[0].embedding.shape for f in good.frames)
    _stage(LlmSummarizer, model_cache, "summary").process_batch(tasks)
    assert good.summary.status in ("ok", "invalid_json") and good.models["summary"] == "tiny:llm"
    assert bad.summary is None and bad.error.startswith("decode: ")


def test_one_bad_item_fails_alone(decoded, model_cache):
    good, broken = copy.deepcopy(decoded[0]), copy.deepcopy(decoded[0])
    broken.video_id = "broken"
    for f in broken.frames:
        f.jpeg = b"not a jpeg"
    _stage(Blip2Captioner, model_cache, "caption").process_batch([good, broken])
    assert good.ok and all(f.caption is not None for f in good.frames)
    assert not broken.ok and broken.error.startswith("caption: ")


def test_stages_declare_resources_and_profiles_override_batches(tmp_path):
    from pipeline.config import load_config
    from pipeline.run import build_stages

    _, on_cpu = build_stages(load_config(str(tmp_path), str(tmp_path / "o"), "cpu", device="cpu"))
    _, anywhere = build_stages(load_config(str(tmp_path), str(tmp_path / "o"), "gpu"))
    assert [s.name for s in on_cpu] == ["asr", "caption", "embedding", "summary"]
    assert all(s.resources.gpus == 0 and 0 < s.resources.cpus < 1 for s in on_cpu)
    assert sum(s.resources.gpus for s in anywhere) <= 1.0 and all(s.resources.gpus > 0 for s in anywhere)
    # The cpu and gpu profiles size the transcriber's calls; the other stages keep what they declare.
    assert [s.batch_size for s in on_cpu] == [2, Blip2Captioner.batch_size, ClipEmbedder.batch_size, 16]
    assert anywhere[0].batch_size == 8
