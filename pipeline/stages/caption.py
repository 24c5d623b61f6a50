"""Keyframes to captions: BLIP-2 over the keyframes of all the batch's videos."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from pipeline.config import Resources
from pipeline.stages.model import ModelStage, frame_images
from pipeline.task import VideoTask

log = logging.getLogger(__name__)


@dataclass
class Blip2Captioner(ModelStage):
    name: str = "caption"
    family: str = "blip2"
    resources: Resources = field(default_factory=lambda: Resources(cpus=0.25, gpus=0.3))
    batch_size: int = 4  # videos per call

    def load(self, path: str, device: str):
        from pipeline.models.blip2 import Blip2CaptionModel

        return Blip2CaptionModel(
            path, device=device, batch_size=self.spec.batch_size, max_new_tokens=self.spec.max_new_tokens,
            revision=self.spec.revision,
        )

    def wants(self, task: VideoTask) -> bool:
        return task.ok and bool(task.frames)

    def process(self, tasks: list[VideoTask]) -> None:
        captions = iter(self.model.caption(frame_images(tasks)))
        for task in tasks:
            for frame in task.frames:
                frame.caption = next(captions).strip()
            task.models[self.name] = self.model_name
