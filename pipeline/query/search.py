"""Search an output: CLIP similarity over keyframes, whole-word matches over captions, transcripts, summaries.

Keyframes are ranked by exact (brute-force) cosine over a cached matrix of their embeddings; the text signals
are DuckDB queries over the tables. Each signal ranks its own candidates; candidates snap to moments (the span
of a video from one keyframe to the next) and moments are ranked by reciprocal-rank fusion, which needs no
calibration between cosine similarities and word matches.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Callable, Sequence

import duckdb

from pipeline.config import default_cache_dir
from pipeline.query import QueryError, Snapshot
from pipeline.query.encoder import Encoder
from pipeline.query.vectors import load_vectors

RRF_K = 60  # the usual reciprocal-rank-fusion constant: top ranks count, deep ranks still add a little
CONTEXT_S = 5.0  # transcript shown on either side of a moment
_STOPWORDS = frozenset("a an and at by for from in into is it of on or the to with".split())
_WORD = re.compile(r"[^\W_]+")
# The same tokenisation in DuckDB: runs of letters and digits, lower-cased.
_TOKENS_SQL = r"list_distinct(string_split_regex(lower({col}), '[^\p{{L}}\p{{N}}]+'))"


@dataclass
class Moment:
    video_id: str
    uri: str
    timestamp_s: float
    frame_index: int | None
    caption: str | None
    transcript: str
    score: float  # 1.0: ranked first by every signal searched
    signals: dict[str, float]  # signal -> its own score: cosine (visual) or share of query words found

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class _Candidate:
    video_id: str
    timestamp_s: float | None
    score: float
    frame_index: int | None = None


@dataclass
class _Acc:
    video_id: str
    anchor: tuple | None  # (frame_index, timestamp_s, caption) of the keyframe the moment belongs to
    rrf: float = 0.0
    signals: dict[str, float] = field(default_factory=dict)
    times: dict[str, float] = field(default_factory=dict)


def query_terms(text: str) -> list[str]:
    words = list(dict.fromkeys(w.lower() for w in _WORD.findall(text)))
    content = [w for w in words if w not in _STOPWORDS]
    return content or words


def embedding_models(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Stored embedding model name -> number of its keyframes (read from the names alone: vectors are costly)."""
    rows = con.execute("SELECT embedding_model, count(*) FROM keyframes GROUP BY 1 ORDER BY 2 DESC").fetchall()
    return {name: n for name, n in rows if name is not None}


def embedding_dim(con: duckdb.DuckDBPyConnection, model: str) -> int | None:
    """The model's embedding width, or None when none of its keyframes has an embedding."""
    column_type = dict(con.execute("SELECT column_name, column_type FROM (DESCRIBE keyframes)").fetchall())["embedding"]
    if re.fullmatch(r"FLOAT\[\d+\]", column_type):  # one width in every shard: known without reading a vector
        return int(column_type[6:-1])
    rows = con.execute(
        "SELECT len(embedding) FROM keyframes WHERE embedding_model = ? AND embedding IS NOT NULL LIMIT 1", [model]
    ).fetchall()
    return int(rows[0][0]) if rows else None


def choose_model(models: dict[str, int], wanted: str | None) -> str:
    """The stored model to search: the one asked for, or the only one there is."""
    stored = ", ".join(f"{m!r} ({n} keyframes)" for m, n in models.items()) or "no embeddings"
    if wanted is not None:
        if wanted not in models:
            raise QueryError(f"no keyframes were embedded with {wanted!r}; this output holds {stored}")
        return wanted
    if len(models) > 1:
        raise QueryError(f"keyframes were embedded by several models, choose one with --model: {stored}")
    return next(iter(models))


def _text(con, terms: list[str], n: int) -> dict[str, list[_Candidate]]:
    """Whole-word matches per text signal, scored by the share of query words found."""
    def score(col: str) -> str:
        return f"len(list_intersect({_TOKENS_SQL.format(col=col)}, $terms)) / {len(terms)}"

    # A cheap regex pass keeps the tokenisation off rows that cannot match.
    any_word = "(?i)" + "|".join(re.escape(t) for t in terms)
    params = {"terms": terms, "re": any_word, "n": n}
    whole = "concat_ws(' ', title, summary)"
    sql = {
        "caption": f"SELECT video_id, timestamp_s, {score('caption')} AS s, frame_index FROM keyframes "
                   "WHERE regexp_matches(caption, $re)",
        "transcript": f"SELECT video_id, start_s, {score('text')} AS s, NULL FROM segments "
                      "WHERE regexp_matches(text, $re)",
        # A summary matches as a whole (title and text), or through a timeline item that also says when.
        "summary": f"SELECT video_id, NULL, {score(whole)} AS s, NULL FROM summaries WHERE regexp_matches({whole}, $re) "
                   f"UNION ALL SELECT video_id, item.timestamp_s, {score('item.text')}, NULL "
                   "FROM (SELECT video_id, unnest(timeline) AS item FROM summaries) WHERE regexp_matches(item.text, $re)",
    }
    out = {}
    for signal, query in sql.items():
        rows = con.execute(f"SELECT * FROM ({query}) WHERE s > 0 ORDER BY s DESC LIMIT $n", params).fetchall()
        out[signal] = [_Candidate(v, None if t is None else float(t), float(s), f) for v, t, s, f in rows]
    # One summary per video: its best match, placed at a timeline item when one matched as well.
    best: dict[str, _Candidate] = {}
    for c in sorted(out["summary"], key=lambda c: (-c.score, c.timestamp_s is None)):
        best.setdefault(c.video_id, c)
    out["summary"] = list(best.values())
    return out


def _anchor(frames: list[tuple], c: _Candidate) -> tuple | None:
    """The keyframe whose span holds the candidate's time (the first one when there is no time)."""
    if c.frame_index is not None:
        return next(f for f in frames if f[0] == c.frame_index)
    if not frames:
        return None
    t = c.timestamp_s if c.timestamp_s is not None else frames[0][1]
    before = [f for f in frames if f[1] <= t]
    return before[-1] if before else frames[0]


def _fuse(ranked: dict[str, list[_Candidate]], frames: dict[str, list[tuple]]) -> list[_Acc]:
    moments: dict[tuple, _Acc] = {}
    for signal, candidates in ranked.items():
        for rank, c in enumerate(candidates, 1):
            anchor = _anchor(frames.get(c.video_id, []), c)
            key = (c.video_id, anchor[0] if anchor else ("t", c.timestamp_s))
            acc = moments.setdefault(key, _Acc(c.video_id, anchor))
            if signal in acc.signals:  # a signal counts once per moment, at its best rank
                continue
            acc.rrf += 1.0 / (RRF_K + rank)
            acc.signals[signal] = round(c.score, 4)
            if c.timestamp_s is not None:
                acc.times[signal] = c.timestamp_s
    return sorted(moments.values(), key=lambda a: (-a.rrf, -a.signals.get("visual", 0.0), a.video_id))


def _moment_time(acc: _Acc) -> float:
    # Speech says when it happens; a keyframe only where its scene starts; a summary's timeline is approximate.
    for signal in ("transcript", "caption", "visual", "summary"):
        if signal in acc.times:
            return acc.times[signal]
    return acc.anchor[1] if acc.anchor else 0.0


def _visual(con, snapshot: Snapshot, text, image, model, encoder, cache_dir: str, n: int,
            progress: Callable[[str], None]) -> list[_Candidate] | None:
    """Keyframes nearest the query's embedding; None when no keyframe has one (words can still search)."""
    models = embedding_models(con)
    name = choose_model(models, model) if models or model is not None else None
    dim = embedding_dim(con, name) if name is not None else None
    vectors = load_vectors(con, snapshot, name, dim, cache_dir) if dim else None
    if vectors is None or not len(vectors.matrix):
        if image is not None or model is not None:
            raise QueryError("no keyframe has an embedding to search")
        return None
    if encoder is None:
        from pipeline.query.encoder import load_encoder

        progress(f"loading the embedder {name} …")  # seconds of silence otherwise, for a real CLIP
        encoder = load_encoder(name, dim, snapshot.commits, cache_dir, snapshot.output.storage_options)
    vector = encoder.embed_images([image])[0] if image is not None else encoder.embed_texts([text])[0]
    if len(vector) != dim:
        raise QueryError(f"the query model gives {len(vector)}-d vectors but the keyframes of {name!r} hold {dim}-d ones")
    return [_Candidate(*r) for r in vectors.top(vector, n)]


def search(
    con: duckdb.DuckDBPyConnection,
    snapshot: Snapshot,
    *,
    text: str | None = None,
    image=None,
    k: int = 10,
    model: str | None = None,
    encoder: Encoder | None = None,
    cache_dir: str | None = None,
    progress: Callable[[str], None] = lambda message: None,
) -> list[Moment]:
    """The ``k`` best moments for a text query, an image (a PIL image), or both.

    ``encoder`` defaults to the stored embedding model, loaded from provenance (see ``pipeline.query.encoder``);
    ``cache_dir`` holds that model and the keyframe vectors (see ``pipeline.query.vectors``); ``progress``
    hears what takes time (loading the model).
    """
    if k < 1:
        raise QueryError(f"--k must be >= 1, got {k}")
    terms = query_terms(text) if text else []
    if not terms and image is None:
        raise QueryError("nothing to search for: give a query with words in it, or --image")
    n = max(100, 10 * k)
    ranked: dict[str, list[_Candidate]] = {}
    visual = _visual(con, snapshot, text, image, model, encoder, str(cache_dir or default_cache_dir()), n, progress)
    if visual is not None:
        ranked["visual"] = visual
    if terms:
        ranked.update(_text(con, terms, n))
    active = len(ranked)
    videos = sorted({c.video_id for cs in ranked.values() for c in cs})
    frames = _by_video(con, "frame_index, timestamp_s, caption", "keyframes", "timestamp_s", videos)
    top = _fuse(ranked, frames)[:k]
    return _moments(con, top, active)


def _by_video(con, columns: str, table: str, order: str, ids: list[str]) -> dict[str, list[tuple]]:
    """``columns`` of ``table`` for the videos ``ids``, grouped per video in ``order``."""
    grouped: dict[str, list[tuple]] = {}
    for video_id, *row in con.execute(
        f"SELECT video_id, {columns} FROM {table} WHERE list_contains($ids, video_id) ORDER BY video_id, {order}",
        {"ids": ids},
    ).fetchall():
        grouped.setdefault(video_id, []).append(tuple(row))
    return grouped


def _moments(con, top: list[_Acc], active: int) -> list[Moment]:
    ids = sorted({a.video_id for a in top})
    uris = dict(con.execute("SELECT video_id, uri FROM videos WHERE list_contains($ids, video_id)", {"ids": ids}).fetchall())
    segments = _by_video(con, "start_s, end_s, text", "segments", "start_s", ids)
    best = active / (RRF_K + 1)
    out = []
    for a in top:
        t = _moment_time(a)
        near = [s[2].strip() for s in segments.get(a.video_id, []) if s[1] >= t - CONTEXT_S and s[0] <= t + CONTEXT_S]
        out.append(Moment(
            video_id=a.video_id, uri=uris.get(a.video_id, ""), timestamp_s=round(float(t), 3),
            frame_index=a.anchor[0] if a.anchor else None, caption=a.anchor[2] if a.anchor else None,
            transcript=" / ".join(s for s in near if s), score=round(a.rrf / best, 4), signals=a.signals,
        ))
    return out


def print_moments(console, moments: Sequence[Moment]) -> None:
    """One line per moment, caption and transcript cut to the terminal; ``--json`` has them whole."""
    from rich.table import Table
    from rich.text import Text

    from pipeline.query import fmt_time
    from pipeline.safe_text import safe

    rows = [(str(i), safe(m.uri.rsplit("/", 1)[-1] or m.video_id), fmt_time(m.timestamp_s), f"{m.score:.3f}",
             " ".join(f"{s} {v:.2f}" for s, v in m.signals.items()), safe(m.caption), safe(m.transcript))
            for i, m in enumerate(moments, 1)]
    headers = ("#", "video", "time", "score", "signals", "caption", "transcript")
    # Fixed widths for the short columns, so that only caption and transcript give way on a narrow terminal.
    fixed = [max(len(h), *(len(r[c]) for r in rows)) if rows else len(h) for c, h in enumerate(headers[:5])]
    fixed[1] = min(fixed[1], 28)
    rest = max(console.width - sum(fixed) - 3 * len(headers) - 1, 20)
    table = Table(header_style="bold")
    for header, width in zip(headers, [*fixed, rest // 3, rest - rest // 3]):
        table.add_column(header, width=width, no_wrap=True, overflow="ellipsis",
                         justify="right" if header in ("#", "score") else "left")
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    console.print(table)
