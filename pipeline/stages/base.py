"""What every stage is: declared resources, batch sizes, ``setup()`` once per actor, a batch method.

Stages know nothing about Ray; the executor (``pipeline.executor``) places them. A stage catches errors per
task and records them on the task (``stage: message``); tasks that already failed pass through untouched.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from pipeline.config import Resources
from pipeline.task import VideoTask

log = logging.getLogger(__name__)


@dataclass
class Stage:
    name: str = "stage"
    resources: Resources = field(default_factory=Resources)
    batch_size: int = 4  # tasks (videos) per call; the model micro-batch is the model spec's batch_size

    def setup(self, device: str) -> None:
        """Load models. Runs once per actor, never in ``__init__``: stage objects are pickled into Ray."""

    def wants(self, task: VideoTask) -> bool:
        """Whether this stage has work for the task; others pass through untouched."""
        return task.ok

    def process(self, tasks: list[VideoTask]) -> None:
        """Do the stage's work on the tasks that want it, in place."""
        raise NotImplementedError

    def process_batch(self, tasks: list[VideoTask]) -> list[VideoTask]:
        todo = [t for t in tasks if self.wants(t)]
        if not todo:
            return tasks
        start = time.perf_counter()
        try:
            self.process(todo)
        except Exception as exc:  # a batch-level failure: retry task by task so one bad video fails alone
            log.warning("%s failed on a batch of %d (%s); retrying one by one", self.name, len(todo), exc)
            for task in todo:
                try:
                    self.process([task])
                except Exception as one:
                    log.warning("%s failed on %s: %s", self.name, task.uri, one)
                    task.fail(self.name, one)
        per_task = (time.perf_counter() - start) / len(todo)
        for task in todo:
            task.seconds[self.name] = task.seconds.get(self.name, 0.0) + per_task
        return tasks
