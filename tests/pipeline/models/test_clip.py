"""CLIP embeddings from the tiny checkpoint: shapes, unit norm, one space for images and texts."""
from __future__ import annotations

import numpy as np
from PIL import Image


def test_image_embeddings_are_unit_vectors(clip_encoder):
    red, blue = Image.new("RGB", (40, 30), (255, 0, 0)), Image.new("RGB", (40, 30), (0, 0, 255))
    vectors = clip_encoder.embed_images([red, blue, red.copy()])  # batch_size=2: two micro-batches
    assert vectors.dtype == np.float32 and vectors.shape == (3, clip_encoder.dim)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.allclose(vectors[0], vectors[2], atol=1e-6)
    assert not np.allclose(vectors[0], vectors[1])


def test_text_embeddings_share_the_image_space(clip_encoder):
    texts = ["a red square", "a blue square on a very long line of text " * 10]  # the second is truncated
    vectors = clip_encoder.embed_texts(texts)
    assert vectors.dtype == np.float32 and vectors.shape == (2, clip_encoder.dim)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.allclose(clip_encoder.embed_texts(texts[:1]), vectors[:1], atol=1e-5)


def test_empty_inputs_give_empty_matrices(clip_encoder):
    assert clip_encoder.embed_images([]).shape == (0, clip_encoder.dim)
    assert clip_encoder.embed_texts([]).shape == (0, clip_encoder.dim)
