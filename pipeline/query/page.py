"""A self-contained HTML page for one video: thumbnails on a timeline, captions, transcript, summary.

Everything is inlined (thumbnails as data: URIs, CSS in the head), so the page opens anywhere offline.
"""
from __future__ import annotations

import base64
import io
from html import escape

from PIL import Image

from pipeline.query import fmt_time
from pipeline.query.show import VideoDigest, summary_line

TRACK_PX = 960
THUMB_PX = 112  # thumbnail width on the timeline track
CARD_PX = 240  # longest side of the thumbnails in the keyframe grid

_CSS = """
body { font: 15px/1.45 system-ui, sans-serif; overflow-wrap: anywhere; margin: 24px auto; max-width: 1000px; color: #222; background: #fafafa; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; }
.meta { color: #666; font-size: 13px; } .error { color: #a33; }
.track { position: relative; width: 960px; border-bottom: 2px solid #999; margin-top: 12px; }
.track a { position: absolute; width: 112px; }
.track img { width: 112px; display: block; border: 1px solid #777; }
.track span { font-size: 11px; color: #555; }
.axis { position: relative; width: 960px; height: 18px; font-size: 11px; color: #666; }
.axis span { position: absolute; }
.grid { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0; width: 240px; } figure img { max-width: 240px; display: block; }
figcaption { font-size: 13px; } .t { color: #666; font-variant-numeric: tabular-nums; margin-right: 8px; }
ol { padding-left: 0; list-style: none; } li { margin: 2px 0; }
"""


def _data_uri(jpeg: bytes, max_side: int) -> str:
    img = Image.open(io.BytesIO(jpeg))
    if max(img.size) > max_side:
        img = img.convert("RGB")
        img.thumbnail((max_side, max_side))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=80)
        jpeg = buf.getvalue()
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()


def _track(d: VideoDigest) -> str:
    """Thumbnails at their time; ones that would overlap move down a lane."""
    duration = d.video["duration_s"] or max((k["timestamp_s"] for k in d.keyframes), default=0.0) or 1.0
    lane_ends: list[float] = []
    items, bottom = [], 0
    for k in d.keyframes:
        left = min(k["timestamp_s"] / duration, 1.0) * (TRACK_PX - THUMB_PX)
        lane = next((i for i, end in enumerate(lane_ends) if end <= left), len(lane_ends))
        lane_ends[lane:lane + 1] = [left + THUMB_PX + 4]
        height = THUMB_PX * k["height"] / max(k["width"], 1) + 20
        top = lane * (THUMB_PX + 24)
        bottom = max(bottom, top + height)
        items.append(
            f'<a href="#kf-{k["frame_index"]}" style="left:{left:.0f}px;top:{top:.0f}px" title="{escape(k["caption"] or "")}">'
            f'<img src="{_data_uri(k["image"], THUMB_PX * 2)}" alt="keyframe at {fmt_time(k["timestamp_s"])}">'
            f'<span>{fmt_time(k["timestamp_s"])}</span></a>'
        )
    # A thumbnail's left edge marks its time, so the ticks sit on the same scale.
    ticks = "".join(
        f'<span style="left:{f * (TRACK_PX - THUMB_PX):.0f}px">| {fmt_time(f * duration)}</span>'
        for f in (0, 0.25, 0.5, 0.75, 1)
    )
    return f'<div class="track" style="height:{bottom:.0f}px">{"".join(items)}</div><div class="axis">{ticks}</div>'


def render_html(d: VideoDigest) -> str:
    v = d.video
    title = (d.summary or {}).get("title") or d.name
    parts = [f"<h1>{escape(title)}</h1>", f'<div class="meta">{escape(d.name)} · {escape(v["video_id"])} · {escape(v["uri"])}</div>']
    if v["status"] != "ok":
        parts.append(f'<p class="error">failed: {escape(v["error"] or "")}</p>')
    else:
        parts.append(
            f'<div class="meta">{v["duration_s"]:.1f} s · {v["width"]}x{v["height"]} @ {v["fps"]:.1f} fps · audio: '
            f'{"yes" if v["has_audio"] else "no"}{" · language " + escape(v["language"]) if v["language"] else ""}</div>'
        )
        s = d.summary
        text = s["summary"] if s and s["status"] == "ok" else summary_line(d)
        parts.append(f"<h2>Summary</h2><p>{escape(text or '')}</p>")
        parts.append(f"<h2>Timeline ({len(d.keyframes)} keyframes)</h2>{_track(d)}")
        cards = "".join(
            f'<figure id="kf-{k["frame_index"]}"><img src="{_data_uri(k["image"], CARD_PX)}" alt="keyframe">'
            f'<figcaption><span class="t">{fmt_time(k["timestamp_s"])}</span>{escape(k["caption"] or "")}</figcaption></figure>'
            for k in d.keyframes
        )
        parts.append(f'<h2>Keyframes</h2><div class="grid">{cards}</div>')
        parts.append("<h2>Transcript</h2>" + _items((s["start_s"], s["text"]) for s in d.segments))
        timeline = (d.summary or {}).get("timeline") or []
        if timeline:
            parts.append("<h2>Summary timeline</h2>" + _items((i["timestamp_s"], i["text"]) for i in timeline))
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f"<style>{_CSS}</style></head><body>{''.join(parts)}</body></html>\n"
    )


def _items(rows) -> str:
    lis = "".join(f'<li><span class="t">{fmt_time(t)}</span>{escape(text.strip())}</li>' for t, text in rows)
    return f"<ol>{lis}</ol>" if lis else "<p>(none)</p>"
