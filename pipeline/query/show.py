"""One video's digest: its row, keyframes, transcript and summary, for the terminal or an HTML page."""
from __future__ import annotations

from dataclasses import dataclass

import duckdb
from rich.console import Console
from rich.text import Text

from pipeline.query import QueryError, fmt_time
from pipeline.safe_text import safe_text


@dataclass
class VideoDigest:
    video: dict
    keyframes: list[dict]  # in time order, each with its JPEG under "image"
    segments: list[dict]
    summary: dict | None

    @property
    def name(self) -> str:
        return self.video["uri"].rsplit("/", 1)[-1]


def find_video(con: duckdb.DuckDBPyConnection, ref: str) -> str:
    """A video id from its id, a unique prefix of it, or its file name."""
    rows = con.execute(
        "SELECT video_id, video_id = $r AS exact FROM videos "
        "WHERE starts_with(video_id, $r) OR uri = $r OR regexp_extract(uri, '[^/]*$') = $r ORDER BY video_id",
        {"r": ref},
    ).fetchall()
    exact = [v for v, is_exact in rows if is_exact]
    ids = exact or sorted({v for v, _ in rows})
    if not ids:
        raise QueryError(f"no video {ref!r} in this output (give a video_id, a prefix of one, or a file name)")
    if len(ids) > 1:
        raise QueryError(f"{ref!r} matches {len(ids)} videos ({', '.join(ids[:3])}{', …' if len(ids) > 3 else ''}); "
                         "give more of the video_id")
    return ids[0]


def _rows(con, sql: str, video_id: str) -> list[dict]:
    cur = con.execute(sql, [video_id])
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


def load_digest(con: duckdb.DuckDBPyConnection, video_id: str) -> VideoDigest:
    video = _rows(con, "SELECT * EXCLUDE (shard_id, processed_at) FROM videos WHERE video_id = ?", video_id)[0]
    keyframes = _rows(
        con, "SELECT frame_index, timestamp_s, width, height, caption, image FROM keyframes WHERE video_id = ? "
        "ORDER BY timestamp_s, frame_index", video_id)
    segments = _rows(con, "SELECT start_s, end_s, text FROM segments WHERE video_id = ? ORDER BY start_s", video_id)
    summaries = _rows(con, "SELECT title, summary, timeline, status, raw FROM summaries WHERE video_id = ?", video_id)
    return VideoDigest(video, keyframes, segments, summaries[0] if summaries else None)


def summary_line(d: VideoDigest) -> str:
    s = d.summary
    if s is None:
        return "(no summary)"
    if s["status"] == "ok":
        return f"{s['title'] or '(untitled)'} — {s['summary'] or ''}"
    if s["status"] == "partial":  # the answer was cut off; what it said before that is kept
        return f"(partial) {s['title'] or '(untitled)'} — {s['summary'] or ''}"
    return f"({s['status']}, raw model output) {' '.join((s['raw'] or '').split())[:200]}"


def print_video(console: Console, d: VideoDigest) -> None:
    """The video's line, its summary, then keyframes and speech on one time line; data text escaped."""
    v = d.video
    console.print(safe_text(d.name, "bold"), safe_text(f"  {v['video_id']}  {v['uri']}", "dim"))
    if v["status"] != "ok":
        console.print(safe_text(f"failed: {v['error']}", "red"))
        return
    console.print(safe_text(
        f"{v['duration_s']:.1f} s, {v['width']}x{v['height']} @ {v['fps']:.1f} fps, audio: "
        f"{'yes' if v['has_audio'] else 'no'}" + (f", language {v['language']}" if v["language"] else "")
    ))
    console.print(Text("summary: ", style="bold") + safe_text(summary_line(d)))
    # Keyframes and speech on one time line, as they happen.
    events = [(k["timestamp_s"], 0, f"▣ {k['caption'] or ''}") for k in d.keyframes]
    events += [(s["start_s"], 1, f"♪ {s['text'].strip()}  (to {fmt_time(s['end_s'])})") for s in d.segments]
    for t, _, line in sorted(events, key=lambda e: (e[0], e[1])):
        console.print(Text(f"  {fmt_time(t)}  ") + safe_text(line))
    timeline = (d.summary or {}).get("timeline") or []
    if timeline:
        console.print(Text("summary timeline:", style="bold"))
        for item in timeline:
            console.print(Text(f"  {fmt_time(item['timestamp_s'])}  ") + safe_text(item["text"]))
