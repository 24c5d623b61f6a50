"""A readable digest of an output: per video, what the pipeline found.

Everything that comes from the data (names, errors, model text) is printed escaped and as plain ``Text``:
a file name may hold escape sequences or rich markup (``pipeline.safe_text``).
"""
from __future__ import annotations

from rich.console import Console
from rich.text import Text

from pipeline.query import TINY_NOTE, fmt_time, made_with_tiny, open_snapshot
from pipeline.query.sql import connect
from pipeline.safe_text import safe_text

FIRST_KEYFRAMES = 5  # shown per video


def _rows(con, sql: str) -> list[dict]:
    cur = con.execute(sql)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


def print_digest(console: Console, output_uri: str, storage_options=None, notes: Console | None = None) -> None:
    """Per video, one line and its first keyframes and summary; ``notes`` (default ``console``) gets the
    warning that tiny-profile text is noise. Reads one snapshot (children only of its videos), grouped per
    video by DuckDB: each table is scanned once, whatever the number of videos."""
    snapshot = open_snapshot(output_uri, storage_options)  # one line when the output is not there
    if made_with_tiny(snapshot.commits):
        (notes or console).print(TINY_NOTE, markup=False, highlight=False, soft_wrap=True)
    with connect(snapshot) as con:
        videos = _rows(con, "SELECT video_id, uri, status, error, duration_s, width, height, fps, has_audio, language "
                            "FROM videos")
        counts = {
            table: dict(con.execute(f"SELECT video_id, count(*) FROM {table} GROUP BY video_id").fetchall())
            for table in ("keyframes", "segments")
        }
        first: dict[str, list[dict]] = {}
        for k in _rows(con, "SELECT video_id, timestamp_s, caption FROM keyframes "
                            f"QUALIFY row_number() OVER (PARTITION BY video_id ORDER BY timestamp_s, frame_index) <= "
                            f"{FIRST_KEYFRAMES} ORDER BY video_id, timestamp_s, frame_index"):
            first.setdefault(k["video_id"], []).append(k)
        summaries = {s["video_id"]: s for s in _rows(con, "SELECT video_id, title, summary, status, raw FROM summaries")}
    for v in sorted(videos, key=lambda r: r["uri"]):
        name = v["uri"].rsplit("/", 1)[-1]
        if v["status"] != "ok":
            console.print(safe_text(f"✗ {name}", "bold red") + safe_text(f"  failed: {v['error']}"))
            continue
        n_kf, n_seg = counts["keyframes"].get(v["video_id"], 0), counts["segments"].get(v["video_id"], 0)
        console.print(safe_text(f"✓ {name}", "bold green") + safe_text(
            f"  {v['duration_s']:.1f} s, {v['width']}x{v['height']} @ {v['fps']:.1f} fps, "
            f"audio: {'yes' if v['has_audio'] else 'no'}, {n_kf} keyframes, {n_seg} segments"
            + (f", language {v['language']}" if v["language"] else "")
        ))
        for k in first.get(v["video_id"], []):
            console.print(safe_text(f"    keyframe {fmt_time(k['timestamp_s'])}  {k['caption'] or ''}"))
        console.print(safe_text(_summary_line(summaries.get(v["video_id"]))))
    console.print(Text(
        f"{len(videos)} videos, {sum(counts['keyframes'].values())} keyframes, {sum(counts['segments'].values())} "
        f"segments, {len(summaries)} summaries"
    ))


def _summary_line(s: dict | None) -> str:
    if s is None:
        return "    summary: (missing)"
    if s["status"] in ("ok", "partial"):
        label = "summary" if s["status"] == "ok" else "summary (partial: the answer was cut off)"
        return f"    {label}: {s['title'] or ''} — {s['summary'] or ''}"
    return f"    summary ({s['status']}, raw model output): {' '.join((s['raw'] or '').split())[:120]}"
