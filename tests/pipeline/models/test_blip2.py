"""BLIP-2 captioning through the real processor and generate() of the tiny checkpoint."""
from __future__ import annotations

from PIL import Image

from pipeline.models.blip2 import Blip2CaptionModel


def test_one_caption_per_image_across_micro_batches(tiny_path):
    captioner = Blip2CaptionModel(tiny_path("blip2"), batch_size=2, max_new_tokens=6)
    images = [Image.new("RGB", (64, 48), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    images.append(Image.new("L", (20, 90), 128))  # grey and odd-sized: converted and resized by the processor
    captions = captioner.caption(images)
    assert len(captions) == len(images) and all(isinstance(c, str) for c in captions)
    # Greedy decoding: the same image gets the same caption wherever it sits in a batch.
    assert captioner.caption(images[2:3]) == captions[2:3]
    assert captioner.caption([]) == []
