"""A readable digest of an output: per video, what the pipeline found.

Everything that comes from the data (names, errors, model text) is printed escaped and as plain ``Text``:
a file name may hold escape sequences or rich markup (``pipeline.safe_text``).
"""
from __future__ import annotations

from rich.console import Console
from rich.text import Text

from pipeline.query import TINY_NOTE, fmt_time, made_with_tiny, open_snapshot
from pipeline.safe_text import safe_text


def print_digest(console: Console, output_uri: str, storage_options=None, notes: Console | None = None) -> None:
    """Per video, one line and its first keyframes and summary; ``notes`` (default ``console``) gets the
    warning that tiny-profile text is noise."""
    snapshot = open_snapshot(output_uri, storage_options)  # one line when the output is not there
    output = snapshot.output
    if made_with_tiny(snapshot.commits):
        (notes or console).print(TINY_NOTE, markup=False, highlight=False, soft_wrap=True)
    videos = output.read_table("videos").to_pylist()
    keyframes = output.read_table("keyframes", ["video_id", "timestamp_s", "caption"]).to_pylist()
    segments = output.read_table("segments", ["video_id", "start_s", "text"]).to_pylist()
    summaries = {s["video_id"]: s for s in output.read_table("summaries").to_pylist()}
    for v in sorted(videos, key=lambda r: r["uri"]):
        name = v["uri"].rsplit("/", 1)[-1]
        if v["status"] != "ok":
            console.print(safe_text(f"✗ {name}", "bold red") + safe_text(f"  failed: {v['error']}"))
            continue
        kf = [k for k in keyframes if k["video_id"] == v["video_id"]]
        seg = [s for s in segments if s["video_id"] == v["video_id"]]
        console.print(safe_text(f"✓ {name}", "bold green") + safe_text(
            f"  {v['duration_s']:.1f} s, {v['width']}x{v['height']} @ {v['fps']:.1f} fps, "
            f"audio: {'yes' if v['has_audio'] else 'no'}, {len(kf)} keyframes, {len(seg)} segments"
            + (f", language {v['language']}" if v["language"] else "")
        ))
        for k in sorted(kf, key=lambda r: r["timestamp_s"])[:5]:
            console.print(safe_text(f"    keyframe {fmt_time(k['timestamp_s'])}  {k['caption'] or ''}"))
        console.print(safe_text(_summary_line(summaries.get(v["video_id"]))))
    console.print(
        Text(f"{len(videos)} videos, {len(keyframes)} keyframes, {len(segments)} segments, {len(summaries)} summaries")
    )


def _summary_line(s: dict | None) -> str:
    if s is None:
        return "    summary: (missing)"
    if s["status"] in ("ok", "partial"):
        label = "summary" if s["status"] == "ok" else "summary (partial: the answer was cut off)"
        return f"    {label}: {s['title'] or ''} — {s['summary'] or ''}"
    return f"    summary ({s['status']}, raw model output): {' '.join((s['raw'] or '').split())[:120]}"
