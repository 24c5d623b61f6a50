"""The query encoder: the very CLIP model that embedded the keyframes, found from the tables' provenance.

A query vector is only comparable with vectors from the same model, so the model is never guessed: its name
comes from the ``embedding_model`` column, its reference (and revision) from the commit records
(``CommitRecord.model_refs``).
"""
from __future__ import annotations

import logging
from typing import Any, Mapping, Protocol, Sequence

import numpy as np

from pipeline.config import default_cache_dir
from pipeline.query import QueryError
from schemas.commit import CommitRecord

log = logging.getLogger(__name__)


class Encoder(Protocol):
    dim: int

    def embed_texts(self, texts: list[str]) -> np.ndarray: ...

    def embed_images(self, images: list) -> np.ndarray: ...


def model_ref(name: str, commits: Sequence[CommitRecord]) -> tuple[str, str | None]:
    """``(ref, revision)`` of the recorded embedding model called ``name`` (the newest record that names it)."""
    for record in sorted(commits, key=lambda c: c.committed_at or "", reverse=True):
        spec = record.model_refs.get("embedding")
        if spec is not None and spec.name == name and spec.ref:
            return spec.ref, spec.revision
    # Records without model_refs: stages record the name as ``ref`` or ``ref@revision``; a revision never
    # holds "/", which keeps local paths and URIs that contain "@" whole.
    ref, sep, revision = name.rpartition("@")
    if sep and ref and revision and "/" not in revision:
        return ref, revision
    return name, None


def load_encoder(
    name: str,
    dim: int,
    commits: Sequence[CommitRecord],
    cache_dir: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> Encoder:
    """Load the embedding model called ``name`` and check that it gives ``dim``-d vectors like the stored ones."""
    ref, revision = model_ref(name, commits)
    log.info("loading query model %s (revision %s)", ref, revision)
    try:
        from transformers.utils import logging as hf_logging

        from pipeline.models.clip import ClipEncoder
        from pipeline.models.store import resolve

        hf_logging.disable_progress_bar()  # the terminal is for the results; -v logs the loading

        path = resolve(ref, "clip", str(cache_dir or default_cache_dir()), revision=revision,
                       storage_options=dict(storage_options or {}))
        encoder = ClipEncoder(path, device="cpu", revision=revision)
    except Exception as exc:  # whatever the loader raises, the user needs the model's name and the cause
        cause = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise QueryError(f"cannot load the embedding model {name!r} recorded in the keyframes: "
                         f"{exc.__class__.__name__}: {cause}") from None
    if encoder.dim != dim:
        raise QueryError(f"the query model {name!r} gives {encoder.dim}-d vectors but the keyframes hold "
                         f"{dim}-d embeddings: the model behind this reference changed since the run")
    return encoder
