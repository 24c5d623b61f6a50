"""The four model stages: each loads its wrapper once per actor in ``setup()`` and batches across videos."""
from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
from PIL import Image

from pipeline.config import ModelSpec
from pipeline.stages.base import Stage
from pipeline.task import VideoTask

log = logging.getLogger(__name__)


@dataclass
class ModelStage(Stage):
    spec: ModelSpec = field(default_factory=lambda: ModelSpec("unset"))
    role: str = ""
    cache_dir: str = ""
    storage_options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def model_name(self) -> str:
        """What the tables record: the reference itself, so a reader can load the very same model."""
        return f"{self.spec.ref}@{self.spec.revision}" if self.spec.revision else self.spec.ref

    def setup(self, device: str) -> None:
        from pipeline.models.store import resolve

        path = resolve(self.spec.ref, self.role, self.cache_dir, self.spec.revision, dict(self.storage_options))
        self.model = self.load(path, device)

    def load(self, path: str, device: str) -> Any:
        raise NotImplementedError


def _images(tasks: list[VideoTask]) -> list[Image.Image]:
    return [Image.open(io.BytesIO(f.jpeg)).convert("RGB") for t in tasks for f in t.frames]


@dataclass
class WhisperTranscriber(ModelStage):
    name: str = "transcribe"
    role: str = "whisper"

    def load(self, path: str, device: str):
        from pipeline.models.whisper import TEMPERATURES, WhisperAsr

        return WhisperAsr(
            path, device=device, batch_size=self.spec.batch_size, max_new_tokens=self.spec.max_new_tokens,
            temperatures=tuple(self.spec.options.get("temperatures", TEMPERATURES)),
        )

    def wants(self, task: VideoTask) -> bool:
        return task.ok and task.audio is not None

    def process(self, tasks: list[VideoTask]) -> None:
        # All windows of all videos in the batch go through one batched decode.
        transcripts = self.model.transcribe_many([t.audio for t in tasks])
        for task, transcript in zip(tasks, transcripts):
            task.language = transcript.language
            task.segments = list(transcript.segments)
            task.models["asr"] = self.model_name
            task.audio = None  # the largest thing a task carries; nothing after this needs it


@dataclass
class Blip2Captioner(ModelStage):
    name: str = "caption"
    role: str = "blip2"

    def load(self, path: str, device: str):
        from pipeline.models.blip2 import Blip2Captioner as Blip2Model

        return Blip2Model(
            path, device=device, batch_size=self.spec.batch_size, max_new_tokens=self.spec.max_new_tokens,
            revision=self.spec.revision,
        )

    def wants(self, task: VideoTask) -> bool:
        return task.ok and bool(task.frames)

    def process(self, tasks: list[VideoTask]) -> None:
        captions = iter(self.model.caption(_images(tasks)))
        for task in tasks:
            for frame in task.frames:
                frame.caption = next(captions).strip()
            task.models["captioner"] = self.model_name


@dataclass
class ClipEmbedder(ModelStage):
    name: str = "embed"
    role: str = "clip"

    def load(self, path: str, device: str):
        from pipeline.models.clip import ClipEncoder

        return ClipEncoder(path, device=device, batch_size=self.spec.batch_size, revision=self.spec.revision)

    def wants(self, task: VideoTask) -> bool:
        return task.ok and bool(task.frames)

    def process(self, tasks: list[VideoTask]) -> None:
        vectors = self.model.embed_images(_images(tasks)).astype(np.float32)
        rows = iter(vectors)
        for task in tasks:
            for frame in task.frames:
                frame.embedding = next(rows)
            task.models["embedder"] = self.model_name


@dataclass
class LlmSummarizer(ModelStage):
    name: str = "summarize"
    role: str = "llm"

    def setup(self, device: str) -> None:
        if self.spec.endpoint:
            # A served model: nothing to resolve or load locally.
            from pipeline.models.llm import load_llm

            self.model = load_llm(self.spec, self.spec.ref, device)
        else:
            super().setup(device)

    def load(self, path: str, device: str):
        from pipeline.models.llm import load_llm

        return load_llm(self.spec, path, device)

    def process(self, tasks: list[VideoTask]) -> None:
        from pipeline.summarize import VideoText, summarize_videos

        # All the tasks' summaries at once: batched generation locally, many requests in flight to a server.
        videos = [
            VideoText(
                t.probe.duration_s, [(f.timestamp_s, f.caption or "") for f in t.frames if f.caption],
                [(s.start_s, s.end_s, s.text) for s in t.segments],
            )
            for t in tasks
        ]
        for task, summary in zip(tasks, summarize_videos(self.model, videos, self.spec.max_new_tokens)):
            if summary.status == "error":
                log.warning("summary failed for %s: %s", task.uri, summary.raw)
            task.summary = summary
            task.models["summarizer"] = self.model_name
