"""Speech to timestamped segments: Whisper over the audio of all the batch's videos at once."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from pipeline.config import Resources
from pipeline.stages.model import ModelStage
from pipeline.task import VideoTask

log = logging.getLogger(__name__)


@dataclass
class WhisperTranscriber(ModelStage):
    name: str = "asr"
    family: str = "whisper"
    resources: Resources = field(default_factory=lambda: Resources(cpus=0.25, gpus=0.3))
    batch_size: int = 4  # videos per call

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
            task.models[self.name] = self.model_name
            task.audio = None  # the largest thing a task carries; nothing after this needs it
