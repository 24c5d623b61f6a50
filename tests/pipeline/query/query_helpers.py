"""Hand-built outputs with known content (colours, captions, speech), written with the real schemas and writer
(``pipeline.store.commit_shard``: one Delta commit per table and a commit record per shard).

The encoder stands in for CLIP so that these tests know what a search must find."""
from __future__ import annotations

import datetime as dt
import io
from types import SimpleNamespace

import numpy as np
from PIL import Image

from pipeline.discover import video_id_for
from pipeline.rows import build_tables
from pipeline.store import Output, commit_shard
from pipeline.task import FrameRecord, VideoTask
from schemas.commit import CommitRecord

NOW = dt.datetime(2026, 11, 23, tzinfo=dt.timezone.utc)
DIM = 8
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (40, 60, 220), "yellow": (230, 210, 40)}
MODEL = "test:colour"


def _colour_vector(rgb) -> np.ndarray:
    v = np.zeros(DIM, np.float32)
    v[:3] = np.asarray(rgb, np.float32) / 255.0
    v[3] = 0.05  # keeps black images off the zero vector
    return v / np.linalg.norm(v)


class ColourEncoder:
    """Stands in for CLIP: an image is its mean colour, a text the colours it names, in one 8-d space."""

    name = MODEL
    dim = DIM

    def embed_images(self, images) -> np.ndarray:
        return np.stack([_colour_vector(np.asarray(im.convert("RGB"), np.float32).reshape(-1, 3).mean(0)) for im in images])

    def embed_texts(self, texts) -> np.ndarray:
        out = []
        for text in texts:
            rgb = sum((np.asarray(c, np.float32) for w, c in COLOURS.items() if w in text.lower()), np.zeros(3, np.float32))
            out.append(_colour_vector(rgb))
        return np.stack(out)


def solid_jpeg(colour: str, size=(64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, COLOURS[colour]).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _video(name, scenes, speech, summary, duration=12.0) -> VideoTask:
    """scenes: (time, colour, caption); speech: (start, end, text); summary: (title, text, [(time, text)])."""
    uri = f"file:///archive/{name}.mp4"
    t = VideoTask(video_id_for(uri), uri, f"fp-{name}", 1000)
    t.probe = SimpleNamespace(duration_s=duration, width=64, height=48, fps=25.0, num_frames=int(duration * 25),
                              codec="h264", rotation=0, has_audio=True)
    enc = ColourEncoder()
    for i, (ts, colour, caption) in enumerate(scenes):
        jpeg = solid_jpeg(colour)
        t.frames.append(FrameRecord(int(ts * 25), ts, jpeg, 64, 48, 1.0 if i == 0 else 0.5, caption,
                                    enc.embed_images([Image.open(io.BytesIO(jpeg))])[0]))
    t.segments = [SimpleNamespace(start_s=a, end_s=b, text=x) for a, b, x in speech]
    t.language = "en"
    title, text, timeline = summary
    t.summary = SimpleNamespace(title=title, summary=text, timeline=[{"timestamp_s": a, "text": x} for a, x in timeline],
                                status="ok", raw=None, chunks=1)
    t.models = {"asr": "test:asr", "caption": "test:caption", "embedding": MODEL, "summary": "test:llm"}
    return t


def archive_tasks() -> list[list[VideoTask]]:
    street = _video(
        "street",
        [(0.0, "red", "a red car parked on a street"), (4.0, "blue", "blue sky over the city"),
         (8.0, "green", "green trees in a park")],
        [(0.0, 3.0, "the engine starts"), (4.0, 7.0, "look at the sky tonight"), (8.5, 11.0, "birds are singing in the trees")],
        ("A drive through town", "A car drives past a park.", [(0.0, "a red car"), (8.0, "the park at dusk")]),
    )
    kitchen = _video(
        "kitchen",
        [(0.0, "yellow", "a yellow lamp in a kitchen"), (2.0, "red", "a red apple on a table")],
        [(0.5, 2.5, "we cook dinner at night"), (3.0, 5.0, "<b>salt</b> & pepper [bold]")],
        ("Cooking dinner", "Someone cooks dinner & eats an apple.", []),
        duration=6.0,
    )
    broken = VideoTask(video_id_for("file:///archive/broken.mp4"), "file:///archive/broken.mp4", "fp-broken", 20)
    broken.fail("decode", "moov atom not found")
    return [[street, broken], [kitchen]]


def shard_record(shard_id: str, tasks: list[VideoTask], profile: str = "test", dim: int = DIM) -> CommitRecord:
    """The commit record a run writes for a shard of ``tasks``: its models (the embedder's name as the
    keyframes record it), profile and embedding width."""
    models = {"asr": "test:asr", "summary": "test:llm", "embedding": MODEL}
    models.update(next((t.models for t in tasks if t.ok), {}))
    return CommitRecord(run="test", shard_id=shard_id, config_fingerprint="cfg", profile=profile, models=models,
                        model_refs={}, embedding_dim=dim)


def shard_tables(tasks: list[VideoTask], shard_id: str, dim: int = DIM):
    return build_tables(tasks, shard_id=shard_id, config_fingerprint="cfg", embedding_dim=dim,
                        model_names={"asr": "test:asr", "summary": "test:llm"}, processed_at=NOW)


def write_archive(output: Output, shards=None, profile: str = "test") -> Output:
    """Commit each list of tasks of ``shards`` (default: ``archive_tasks()``) as shard ``n`` (16 hex digits)."""
    for n, tasks in enumerate(shards or archive_tasks()):
        shard_id = f"{n:016x}"
        commit_shard(output, shard_tables(tasks, shard_id), shard_record(shard_id, tasks, profile), planned_version=-1)
    return output
