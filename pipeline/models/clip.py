"""CLIP image and text embeddings in one L2-normalised space."""
from __future__ import annotations

import logging

import numpy as np
import torch
from PIL import Image

log = logging.getLogger(__name__)


class ClipEncoder:
    def __init__(self, path_or_id: str, device: str = "cpu", batch_size: int = 32, revision: str | None = None):
        from transformers import AutoProcessor, CLIPModel

        self.name = path_or_id
        self.device = device
        self.batch_size = batch_size
        self.dtype = torch.float16 if device.startswith("cuda") else torch.float32
        self.processor = AutoProcessor.from_pretrained(path_or_id, revision=revision)
        self.model = CLIPModel.from_pretrained(path_or_id, revision=revision, dtype=self.dtype).to(device).eval()
        self.dim = int(self.model.config.projection_dim)
        self.max_text_tokens = int(self.model.config.text_config.max_position_embeddings)

    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        """float32 ``[n, dim]``, unit norm."""
        parts = []
        for start in range(0, len(images), self.batch_size):
            batch = [im.convert("RGB") for im in images[start:start + self.batch_size]]
            inputs = self.processor(images=batch, return_tensors="pt").to(self.device, self.dtype)
            with torch.inference_mode():
                # transformers 5 returns a model output here; pooler_output holds the projected embedding.
                parts.append(self.model.get_image_features(**inputs).pooler_output)
        return self._normalised(parts)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """float32 ``[n, dim]``, unit norm, comparable with ``embed_images``."""
        parts = []
        for start in range(0, len(texts), self.batch_size):
            inputs = self.processor(
                text=list(texts[start:start + self.batch_size]), return_tensors="pt", padding=True, truncation=True,
                max_length=self.max_text_tokens,
            ).to(self.device)
            with torch.inference_mode():
                parts.append(self.model.get_text_features(**inputs).pooler_output)
        return self._normalised(parts)

    def _normalised(self, parts: list[torch.Tensor]) -> np.ndarray:
        if not parts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = torch.cat(parts).float()
        return torch.nn.functional.normalize(vectors, dim=-1).cpu().numpy().astype(np.float32)
