"""Transcript and captions to a title, a summary and a timeline, asked of a chat LLM under a JSON schema."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from pipeline.config import Resources
from pipeline.stages.model import ModelStage
from pipeline.task import VideoTask

log = logging.getLogger(__name__)


@dataclass
class LlmSummarizer(ModelStage):
    name: str = "summary"
    family: str = "llm"
    resources: Resources = field(default_factory=lambda: Resources(cpus=0.25, gpus=0.3))
    batch_size: int = 16  # videos per call

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
            task.models[self.name] = self.model_name
