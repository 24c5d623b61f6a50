"""Keyframes to L2-normalised CLIP embeddings, for search by text and by image."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from pipeline.config import Resources
from pipeline.stages.model import ModelStage, frame_images
from pipeline.task import VideoTask

log = logging.getLogger(__name__)


@dataclass
class ClipEmbedder(ModelStage):
    name: str = "embedding"
    family: str = "clip"
    resources: Resources = field(default_factory=lambda: Resources(cpus=0.25, gpus=0.1))
    batch_size: int = 8  # videos per call

    def load(self, path: str, device: str):
        from pipeline.models.clip import ClipEncoder

        return ClipEncoder(path, device=device, batch_size=self.spec.batch_size, revision=self.spec.revision)

    def wants(self, task: VideoTask) -> bool:
        return task.ok and bool(task.frames)

    def process(self, tasks: list[VideoTask]) -> None:
        vectors = self.model.embed_images(frame_images(tasks)).astype(np.float32)
        rows = iter(vectors)
        for task in tasks:
            for frame in task.frames:
                frame.embedding = next(rows)
            task.models[self.name] = self.model_name
