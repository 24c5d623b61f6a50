"""The public table contract: pyarrow schemas of the four tables and the schema version.

Column names here are the contract (see DESIGN.md): add columns freely, never rename these.
"""
import pyarrow as pa

SCHEMA_VERSION = "3"  # 3: Delta tables; every table has shard_id (2: keyframes lost the unused error column)

# The model roles: one name each, the same in config (``models.<role>``), stage names, task fields, commit records
# and the tables' ``<role>_model`` columns.
ROLES = ("asr", "caption", "embedding", "summary")
# What the roles were called before they had one name each; configs and records written then still read.
OLD_ROLE_NAMES = {"captioner": "caption", "embedder": "embedding", "summarizer": "summary",
                  "transcribe": "asr", "embed": "embedding", "summarize": "summary"}

_PROVENANCE = [
    pa.field("pipeline_version", pa.string(), nullable=False),
    pa.field("config_fingerprint", pa.string(), nullable=False),
    pa.field("processed_at", pa.timestamp("us", tz="UTC"), nullable=False),
]

VIDEOS = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("uri", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),  # ok | failed
        pa.field("error", pa.string()),
        pa.field("input_fingerprint", pa.string(), nullable=False),
        pa.field("size_bytes", pa.int64()),
        pa.field("duration_s", pa.float64()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("fps", pa.float64()),
        pa.field("num_frames", pa.int64()),
        pa.field("codec", pa.string()),
        pa.field("rotation", pa.int16()),
        pa.field("has_audio", pa.bool_()),
        pa.field("language", pa.string()),
        pa.field("num_keyframes", pa.int32()),
        pa.field("num_segments", pa.int32()),
        pa.field("shard_id", pa.string(), nullable=False),
        *_PROVENANCE,
    ],
    metadata={"reelscope.table": "videos", "reelscope.schema_version": SCHEMA_VERSION},
)

def embedding_type(dim: int) -> pa.DataType:
    return pa.list_(pa.field("item", pa.float32(), nullable=False), dim)


# Delta has no fixed-size list: a Delta reader gets ``list<float>`` back. The width travels in the column's
# field metadata (and in each commit record); readers cast back with it.
EMBEDDING_DIM_KEY = "reelscope.embedding_dim"


def keyframes_schema(dim: int) -> pa.Schema:
    """The embedding width is the embedder's: the column is ``fixed_size_list<float32>[dim]``."""
    return pa.schema(
        [
            pa.field("video_id", pa.string(), nullable=False),
            pa.field("frame_index", pa.int64(), nullable=False),
            pa.field("timestamp_s", pa.float64(), nullable=False),
            pa.field("width", pa.int32(), nullable=False),
            pa.field("height", pa.int32(), nullable=False),
            pa.field("scene_score", pa.float32()),
            pa.field("image", pa.binary(), nullable=False),  # JPEG
            pa.field("caption", pa.string()),
            pa.field("embedding", embedding_type(dim)),
            pa.field("caption_model", pa.string()),
            pa.field("embedding_model", pa.string()),
            pa.field("shard_id", pa.string(), nullable=False),
            *_PROVENANCE,
        ],
        metadata={"reelscope.table": "keyframes", "reelscope.schema_version": SCHEMA_VERSION},
    )


SEGMENTS = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("segment_index", pa.int32(), nullable=False),
        pa.field("start_s", pa.float64(), nullable=False),
        pa.field("end_s", pa.float64(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("language", pa.string()),
        pa.field("asr_model", pa.string(), nullable=False),
        pa.field("shard_id", pa.string(), nullable=False),
        *_PROVENANCE,
    ],
    metadata={"reelscope.table": "segments", "reelscope.schema_version": SCHEMA_VERSION},
)

TIMELINE_ITEM = pa.struct(
    [pa.field("timestamp_s", pa.float64(), nullable=False), pa.field("text", pa.string(), nullable=False)]
)

SUMMARIES = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("title", pa.string()),
        pa.field("summary", pa.string()),
        pa.field("timeline", pa.list_(TIMELINE_ITEM)),
        pa.field("status", pa.string(), nullable=False),  # ok | partial (cut off, recovered) | invalid_json | error
        pa.field("raw", pa.string()),  # the model's answer, kept whenever it was not valid JSON
        pa.field("chunks", pa.int32(), nullable=False),
        pa.field("summary_model", pa.string(), nullable=False),
        pa.field("shard_id", pa.string(), nullable=False),
        *_PROVENANCE,
    ],
    metadata={"reelscope.table": "summaries", "reelscope.schema_version": SCHEMA_VERSION},
)

TABLES = ("videos", "keyframes", "segments", "summaries")
# The order of a shard's commits: a ``videos`` row, committed last, means the video's other rows are there.
COMMIT_ORDER = ("keyframes", "segments", "summaries", "videos")


def schema_for(table: str, embedding_dim: int | None = None) -> pa.Schema:
    if table == "videos":
        return VIDEOS
    if table == "keyframes":
        if embedding_dim is None:
            raise ValueError("the keyframes schema needs the embedding dimension")
        return keyframes_schema(embedding_dim)
    if table == "segments":
        return SEGMENTS
    if table == "summaries":
        return SUMMARIES
    raise ValueError(f"unknown table {table!r}; tables are {', '.join(TABLES)}")
