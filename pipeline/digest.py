"""A readable digest of an output: per video, what the pipeline found."""
from __future__ import annotations

from rich.console import Console

from pipeline.query import fmt_time, printable
from pipeline.tables import Output, OutputError


def print_digest(console: Console, output_uri: str, storage_options=None) -> None:
    output = Output(output_uri, storage_options)
    if not output.manifests(all_partitions=True):
        raise OutputError(f"no reelscope tables under {output_uri} (run `reelscope run` first)")
    videos = output.read_table("videos").to_pylist()
    keyframes = output.read_table("keyframes", ["video_id", "timestamp_s", "caption"]).to_pylist()
    segments = output.read_table("segments", ["video_id", "start_s", "text"]).to_pylist()
    summaries = {s["video_id"]: s for s in output.read_table("summaries").to_pylist()}
    for v in sorted(videos, key=lambda r: r["uri"]):
        name = v["uri"].rsplit("/", 1)[-1]
        if v["status"] != "ok":
            console.print(f"[bold red]✗ {name}[/]  failed: {v['error']}", highlight=False)
            continue
        kf = [k for k in keyframes if k["video_id"] == v["video_id"]]
        seg = [s for s in segments if s["video_id"] == v["video_id"]]
        console.print(
            f"[bold green]✓ {name}[/]  {v['duration_s']:.1f} s, {v['width']}x{v['height']} @ {v['fps']:.1f} fps, "
            f"audio: {'yes' if v['has_audio'] else 'no'}, {len(kf)} keyframes, {len(seg)} segments"
            + (f", language {v['language']}" if v["language"] else ""),
            highlight=False,
        )
        for k in sorted(kf, key=lambda r: r["timestamp_s"])[:5]:
            console.print(f"    keyframe {fmt_time(k['timestamp_s'])}  {printable(k['caption'])}", markup=False, highlight=False)
        s = summaries.get(v["video_id"])
        if s is None:
            console.print("    summary: (missing)", markup=False)
        elif s["status"] in ("ok", "partial"):
            label = "summary" if s["status"] == "ok" else "summary (partial: the answer was cut off)"
            console.print(f"    {label}: {printable(s['title'])} — {printable(s['summary'])}", markup=False, highlight=False)
        else:
            raw = printable(s["raw"])[:120]
            console.print(f"    summary ({s['status']}, raw model output): {raw}", markup=False, highlight=False)
    console.print(f"{len(videos)} videos, {len(keyframes)} keyframes, {len(segments)} segments, {len(summaries)} summaries")
