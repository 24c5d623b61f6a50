"""End to end on real weights: spoken videos through `pipeline.run.run`, judged by what the tables say.

Whisper base (the bundled CTranslate2 weights, converted for openai-whisper) transcribes and SmolLM2-135M
(the bundled GGUF) summarises; the caption and embedding models stay tiny, as no real weights for them can be had
here. The talk's transcript is scored against the script it was spoken from, and against openai-whisper's
``transcribe`` and faster-whisper's batched pipeline run on the very same audio with the same weights.
"""
from __future__ import annotations

import statistics

import numpy as np
import pytest
import yaml

from pipeline.config import load_config
from pipeline.media.audio import extract_audio
from pipeline.media.speech import lay_out, music, start_errors, word_error_rate, write_talk
from pipeline.run import run
from pipeline.store import open_snapshot

SPANISH = [(0.5, "Hoy vamos a preparar una sopa de verduras."), (4.5, "El tiempo hoy es soleado y agradable.")]


@pytest.fixture(scope="module")
def spoken(tmp_path_factory, talk):
    folder = tmp_path_factory.mktemp("spoken")
    audio, utterances = talk
    seconds = len(audio) / 16000
    write_talk(folder / "talk.mp4", audio, [("navy", 20.0), ("olive", 20.0), ("maroon", seconds - 40.0)])
    spanish, _ = lay_out(SPANISH, 9.0, voice="es")
    write_talk(folder / "spanish.mp4", spanish)
    write_talk(folder / "music.mp4", music(12.0))
    write_talk(folder / "silent.mp4", np.zeros(8 * 16000, np.float32))
    return folder, utterances


@pytest.fixture(scope="module")
def real_run(spoken, tmp_path_factory, ray_session, model_cache, real_weights):
    folder, _ = spoken
    out = tmp_path_factory.mktemp("real-out")
    config_file = out.parent / f"{out.name}.yaml"
    gguf = real_weights("smollm2-135m-instruct") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    config_file.write_text(yaml.safe_dump({"models": {
        "asr": {"ref": str(real_weights("whisper-base")), "max_new_tokens": 224, "options": {}},
        "summary": {"ref": str(gguf), "max_new_tokens": 512, "options": {"context_tokens": 2048}},
    }}))
    config = load_config(str(folder), str(out), "tiny", str(config_file), cache_dir=model_cache)
    summary = run(config)
    assert summary.ok == 4 and summary.failed == 0, summary.failures
    tables = open_snapshot(str(out))
    videos = {v["uri"].rsplit("/", 1)[-1]: v for v in tables.read("videos").to_pylist()}
    by_name = {v["video_id"]: name for name, v in videos.items()}
    segments: dict[str, list[dict]] = {name: [] for name in videos}
    for s in sorted(tables.read("segments").to_pylist(), key=lambda s: s["start_s"]):
        segments[by_name[s["video_id"]]].append(s)
    summaries = {by_name[s["video_id"]]: s for s in tables.read("summaries").to_pylist()}
    return config, videos, segments, summaries


@pytest.fixture(scope="module")
def peers(spoken, real_run, real_weights):
    """The talk's transcript by ``whisper.transcribe`` and by faster-whisper's batched pipeline."""
    import whisper
    from faster_whisper import BatchedInferencePipeline, WhisperModel

    from pipeline.models.store import resolve

    folder, _ = spoken
    config = real_run[0]
    audio = extract_audio(str(folder / "talk.mp4"))
    model = whisper.load_model(resolve(str(real_weights("whisper-base")), "whisper", config.cache_dir))
    by_whisper = whisper.transcribe(model, audio, fp16=False)["text"]
    fw = WhisperModel(str(real_weights("whisper-base")), device="cpu", compute_type="float32", cpu_threads=2)
    segments, _ = BatchedInferencePipeline(fw).transcribe(audio, beam_size=1, batch_size=8)
    return by_whisper, " ".join(s.text for s in segments)


def test_talk_transcript_is_as_good_as_the_peers(spoken, real_run, peers):
    _, utterances = spoken
    reference = " ".join(u.text for u in utterances)
    ours = word_error_rate(reference, " ".join(s["text"] for s in real_run[2]["talk.mp4"]))
    by_whisper, by_faster_whisper = (word_error_rate(reference, text) for text in peers)
    assert ours <= by_whisper and ours <= by_faster_whisper + 0.01, (ours, by_whisper, by_faster_whisper)
    assert ours <= 0.08


def test_no_sentence_lost_or_repeated_and_starts_are_on_time(spoken, real_run):
    _, utterances = spoken
    segments = real_run[2]["talk.mp4"]
    assert {s["language"] for s in segments} == {"en"}
    assert any(u.start_s < 30.0 < u.end_s for u in utterances)  # the talk does put sentences across 30 s
    for u in utterances:  # each sentence is heard, whole, once: by the segments that overlap it in time
        heard = [s for s in segments if s["start_s"] < u.end_s and s["end_s"] > u.start_s]
        assert heard and word_error_rate(u.text, " ".join(s["text"] for s in heard)) <= 0.4, (u, heard)
    assert all(a["end_s"] <= b["start_s"] + 0.05 for a, b in zip(segments, segments[1:]))
    words = sum(len(s["text"].split()) for s in segments)
    assert words <= 1.05 * sum(len(u.text.split()) for u in utterances)
    assert statistics.median(start_errors(utterances, [s["start_s"] for s in segments])) <= 0.5


def test_languages_music_and_silence(real_run):
    _, videos, segments, _ = real_run
    assert segments["spanish.mp4"] and {s["language"] for s in segments["spanish.mp4"]} == {"es"}
    assert word_error_rate(" ".join(t for _, t in SPANISH), " ".join(s["text"] for s in segments["spanish.mp4"]),
                           english=False) <= 0.5
    assert segments["music.mp4"] == [] and segments["silent.mp4"] == []
    assert videos["music.mp4"]["num_segments"] == 0 and videos["music.mp4"]["status"] == "ok"


def test_talk_summary_is_valid_and_inside_the_video(real_run):
    _, videos, _, summaries = real_run
    summary = summaries["talk.mp4"]
    assert summary["status"] == "ok", summary
    assert summary["title"] and summary["summary"]
    duration = videos["talk.mp4"]["duration_s"]
    assert summary["timeline"] and all(0 <= item["timestamp_s"] <= duration for item in summary["timeline"])
