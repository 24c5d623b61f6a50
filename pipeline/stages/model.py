"""What every model stage shares: a model spec resolved to a local path and loaded once per actor."""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any, Mapping

from PIL import Image

from pipeline.config import ModelSpec
from pipeline.stages.base import Stage
from pipeline.task import VideoTask


@dataclass
class ModelStage(Stage):
    """A stage around one model. Each declares its resources: fractional CPUs, which leave whole cores for
    decode tasks and the driver's reads and writes (on 2 cores whole-CPU actors starved the decode tasks),
    and GPU shares that add up to one GPU over the four model stages. ``batch_size`` is videos per call;
    the model's own micro-batch is its spec's ``batch_size``, and a spec's ``stage_batch_size`` overrides
    the stage's."""

    spec: ModelSpec = field(default_factory=lambda: ModelSpec("unset"))
    family: str = ""  # the architecture (whisper, blip2, clip, llm): how tiny builds and conversions go
    cache_dir: str = ""  # "": the cache of the node the model loads on (``default_cache_dir`` there)
    storage_options: Mapping[str, Any] = field(default_factory=dict)  # without credentials: see ``setup``

    @property
    def model_name(self) -> str:
        """What the tables record: the reference itself, so a reader can load the very same model."""
        return f"{self.spec.ref}@{self.spec.revision}" if self.spec.revision else self.spec.ref

    def setup(self, device: str) -> None:
        """Load the model, on the node this runs on: into that node's cache unless ``cache_dir`` names one,
        reading a remote ref with the credentials of this worker's environment (the run's runtime env)."""
        from transformers.utils import logging as hf_logging

        from pipeline.config import default_cache_dir
        from pipeline.models.store import resolve

        # Per-load progress bars from every actor would drown the run's own progress.
        hf_logging.disable_progress_bar()
        cache = self.cache_dir or str(default_cache_dir())
        self.model_path = resolve(self.spec.ref, self.family, cache, self.spec.revision, dict(self.storage_options))
        self.model = self.load(self.model_path, device)

    def load(self, path: str, device: str) -> Any:
        raise NotImplementedError


def _images(tasks: list[VideoTask]) -> list[Image.Image]:
    return [Image.open(io.BytesIO(f.jpeg)).convert("RGB") for t in tasks for f in t.frames]


def frame_images(tasks: list[VideoTask]) -> list[Image.Image]:
    """The keyframes of ``tasks``, in order, as RGB images."""
    return [Image.open(io.BytesIO(f.jpeg)).convert("RGB") for t in tasks for f in t.frames]
