"""BLIP-2 image captioning (``Blip2ForConditionalGeneration`` and its processor)."""
from __future__ import annotations

import logging

import torch
from PIL import Image

log = logging.getLogger(__name__)


class Blip2CaptionModel:
    def __init__(
        self, path_or_id: str, device: str = "cpu", batch_size: int = 8, max_new_tokens: int = 30,
        revision: str | None = None,
    ):
        from transformers import AutoProcessor, Blip2ForConditionalGeneration

        self.name = path_or_id
        self.device = device
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        # Half precision only where it is fast and supported; CPU kernels want fp32.
        self.dtype = torch.float16 if device.startswith("cuda") else torch.float32
        self.processor = AutoProcessor.from_pretrained(path_or_id, revision=revision)
        self.model = Blip2ForConditionalGeneration.from_pretrained(path_or_id, revision=revision, dtype=self.dtype)
        self.model.to(device).eval()

    def caption(self, images: list[Image.Image]) -> list[str]:
        """One caption per image, in order."""
        captions: list[str] = []
        for start in range(0, len(images), self.batch_size):
            batch = [im.convert("RGB") for im in images[start:start + self.batch_size]]
            # Images only: generate() then builds the prompt itself (query placeholders + BOS), the same
            # for every checkpoint whatever its processor config says about image tokens.
            inputs = self.processor(images=batch, return_tensors="pt").to(self.device, self.dtype)
            with torch.inference_mode():
                out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
            # The returned ids start with that prompt; its tokens are all special, so decoding drops them.
            captions.extend(t.strip() for t in self.processor.batch_decode(out, skip_special_tokens=True))
        return captions
