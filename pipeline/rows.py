"""Turn finished tasks into the four tables, always with the explicit schemas."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa

from pipeline.config import PIPELINE_VERSION
from pipeline.task import VideoTask
from schemas import SEGMENTS, SUMMARIES, VIDEOS, embedding_type, keyframes_schema


def build_tables(
    tasks: list[VideoTask],
    *,
    shard_id: str,
    config_fingerprint: str,
    embedding_dim: int,
    model_names: dict[str, str],
    processed_at: dt.datetime,
) -> dict[str, pa.Table]:
    prov = {"pipeline_version": PIPELINE_VERSION, "config_fingerprint": config_fingerprint, "processed_at": processed_at,
            "shard_id": shard_id}
    videos, keyframes, segments, summaries = [], [], [], []
    embeddings: list[np.ndarray] = []
    for t in tasks:
        p = t.probe if t.ok else None
        videos.append(
            {
                "video_id": t.video_id,
                "uri": t.uri,
                "status": "ok" if t.ok else "failed",
                "error": t.error,
                "input_fingerprint": t.input_fingerprint,
                "size_bytes": t.size,
                "duration_s": p.duration_s if p else None,
                "width": p.width if p else None,
                "height": p.height if p else None,
                "fps": p.fps if p else None,
                "num_frames": p.num_frames if p else None,
                "codec": p.codec if p else None,
                "rotation": p.rotation if p else None,
                "has_audio": p.has_audio if p else None,
                "language": t.language if t.ok else None,
                "num_keyframes": len(t.frames) if t.ok else None,
                "num_segments": len(t.segments) if t.ok else None,
                **prov,
            }
        )
        if not t.ok:
            continue
        for f in t.frames:
            keyframes.append(
                {
                    "video_id": t.video_id,
                    "frame_index": f.frame_index,
                    "timestamp_s": f.timestamp_s,
                    "width": f.width,
                    "height": f.height,
                    "scene_score": f.scene_score,
                    "image": f.jpeg,
                    "caption": f.caption,
                    "caption_model": t.models.get("caption"),
                    "embedding_model": t.models.get("embedding"),
                    **prov,
                }
            )
            embeddings.append(f.embedding)
        for i, s in enumerate(t.segments):
            segments.append(
                {
                    "video_id": t.video_id,
                    "segment_index": i,
                    "start_s": s.start_s,
                    "end_s": s.end_s,
                    "text": s.text,
                    "language": t.language,
                    "asr_model": t.models.get("asr", model_names.get("asr", "")),
                    **prov,
                }
            )
        s = t.summary
        summaries.append(
            {
                "video_id": t.video_id,
                "title": s.title if s else None,
                "summary": s.summary if s else None,
                "timeline": s.timeline if s else [],
                "status": s.status if s else "error",
                "raw": s.raw if s else "summary: no summary was produced",
                "chunks": s.chunks if s else 0,
                "summary_model": t.models.get("summary", model_names.get("summary", "")),
                **prov,
            }
        )
    kf_schema = keyframes_schema(embedding_dim)
    kf = pa.Table.from_pylist(keyframes, schema=kf_schema.remove(kf_schema.get_field_index("embedding")))
    kf = kf.add_column(kf_schema.get_field_index("embedding"), kf_schema.field("embedding"), _embeddings(embeddings, embedding_dim))
    return {
        "videos": pa.Table.from_pylist(videos, schema=VIDEOS),
        "keyframes": kf.cast(kf_schema),
        "segments": pa.Table.from_pylist(segments, schema=SEGMENTS),
        "summaries": pa.Table.from_pylist(summaries, schema=SUMMARIES),
    }


def _embeddings(vectors: list[np.ndarray | None], dim: int) -> pa.Array:
    """A fixed_size_list<float32> column built from one flat buffer (no per-row Python lists)."""
    valid = np.array([v is not None for v in vectors], dtype=bool)
    flat = np.zeros((len(vectors), dim), dtype=np.float32)
    for i, v in enumerate(vectors):
        if v is not None:
            if v.shape != (dim,):
                raise ValueError(f"embedding has shape {v.shape}, expected ({dim},)")
            flat[i] = v
    values = pa.array(flat.reshape(-1), type=pa.float32())
    mask = pa.array(~valid) if not valid.all() else None
    return pa.FixedSizeListArray.from_arrays(values, type=embedding_type(dim), mask=mask)
