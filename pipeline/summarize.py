"""Per-video summaries: a timeline of what is seen and said, asked of a chat LLM as JSON.

A timeline longer than the model's context is summarised in chunks, and the chunk summaries are merged
(in rounds, when even they do not fit at once). A model's answer is data: whatever it says, the result is a
``SummaryResult`` whose ``status`` tells whether valid JSON came back, with the raw answer kept when not.
"""
from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # the protocol only: importing the module would import torch
    from pipeline.models.llm import ChatLlm

log = logging.getLogger(__name__)

# Room left for what token counts do not see: the chat template's markup, and estimates of endpoints.
MARGIN_TOKENS = 32

SYSTEM = (
    "You summarise videos. You are given a timeline of a video: captions of its keyframes and its speech "
    "transcript, each line starting with its time as [mm:ss]. Answer with one JSON object and nothing else: "
    '{"title": string, "summary": string, "timeline": [{"timestamp_s": number, "text": string}]}. '
    "timestamp_s is in seconds from the start of the video; keep only the key moments in timeline."
)

MERGE = (
    "You merge summaries of consecutive parts of one video into a summary of the whole video. Answer with "
    'one JSON object and nothing else: {"title": string, "summary": string, '
    '"timeline": [{"timestamp_s": number, "text": string}]}. Keep the key moments with their timestamp_s.'
)


@dataclass(frozen=True)
class SummaryResult:
    title: str | None
    summary: str | None
    timeline: list[dict]  # {"timestamp_s": float, "text": str}, sorted by time
    status: str  # "ok" | "invalid_json" | "error"
    raw: str | None  # the model's answer when it was not valid JSON
    chunks: int  # timeline chunks summarised separately (1: the whole timeline in one prompt)


def summarize_video(
    llm: ChatLlm,
    *,
    duration_s: float,
    captions: list[tuple[float, str]],
    segments: list[tuple[float, float, str]],
    max_new_tokens: int,
) -> SummaryResult:
    lines = timeline_lines(captions, segments)
    if not lines:
        return SummaryResult(None, None, [], "error", "summarize: no captions and no transcript to summarise", 0)
    budget = llm.context_tokens - max_new_tokens - MARGIN_TOKENS
    intro = f"A video of {_clock(duration_s)} ({duration_s:.0f} s)."
    header = llm.count_tokens(SYSTEM) + llm.count_tokens(intro + " Part 00 of 00. Timeline:\n")
    if header >= budget:
        raise ValueError(
            f"summarizer context of {llm.context_tokens} tokens leaves no room for a timeline "
            f"after {max_new_tokens} new tokens and a {header}-token prompt"
        )
    chunks = _pack(lines, budget - header, llm.count_tokens)
    answers = []
    for i, chunk in enumerate(chunks, 1):
        part = f" Part {i} of {len(chunks)}." if len(chunks) > 1 else ""
        user = f"{intro}{part} Timeline:\n" + "\n".join(chunk)
        answers.append(_ask(llm, SYSTEM, user, max_new_tokens, duration_s))
    if len(chunks) > 1:
        log.info("summarised %d chunks; merging", len(chunks))
    return _merge(llm, answers, budget, max_new_tokens, duration_s, intro, len(chunks))


def timeline_lines(captions: list[tuple[float, str]], segments: list[tuple[float, float, str]]) -> list[str]:
    """``[mm:ss] caption: ...`` and ``[mm:ss] said: ...`` lines, in time order."""
    items = [(t, f"[{_clock(t)}] caption: {' '.join(c.split())}") for t, c in captions if c and c.strip()]
    items += [(s, f"[{_clock(s)}] said: {' '.join(x.split())}") for s, _, x in segments if x and x.strip()]
    return [line for _, line in sorted(items, key=lambda item: item[0])]


def extract_json(text: str) -> Any:
    """The first JSON object in a model's answer (inside ``` fences or around prose), or None."""
    candidates = [m.group(1) for m in re.finditer(r"```(?:json)?\s*(.*?)```", text, re.DOTALL)] + [text]
    decoder = json.JSONDecoder()
    for candidate in candidates:
        for start in (m.start() for m in re.finditer(r"\{", candidate)):
            try:
                value, _ = decoder.raw_decode(candidate, start)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                return value
    return None


def validate(value: Any, duration_s: float) -> tuple[str | None, str, list[dict]] | None:
    """``(title, summary, timeline)`` when ``value`` has the asked-for shape, else None.

    The summary is required and title must be a string when given; timeline items that are not
    ``{"timestamp_s": number within the video, "text": string}`` are dropped, not fatal.
    """
    if not isinstance(value, dict):
        return None
    title, summary = value.get("title"), value.get("summary")
    timeline = [] if value.get("timeline") is None else value["timeline"]
    if not isinstance(summary, str) or not summary.strip() or not isinstance(title, (str, type(None))):
        return None
    if not isinstance(timeline, list):
        return None
    items = []
    for item in timeline:
        t = item.get("timestamp_s") if isinstance(item, dict) else None
        text = item.get("text") if isinstance(item, dict) else None
        if (
            isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) and 0 <= t <= duration_s
            and isinstance(text, str) and text.strip()
        ):
            items.append({"timestamp_s": float(t), "text": text.strip()})
        else:
            log.debug("dropping timeline item %r", item)
    items.sort(key=lambda item: item["timestamp_s"])
    return (title.strip() or None) if title else None, summary.strip(), items


@dataclass(frozen=True)
class _Answer:
    raw: str
    parsed: tuple[str | None, str, list[dict]] | None


def _ask(llm: ChatLlm, system: str, user: str, max_new_tokens: int, duration_s: float) -> _Answer:
    raw = llm.complete([{"role": "system", "content": system}, {"role": "user", "content": user}], max_new_tokens)
    return _Answer(raw, validate(extract_json(raw), duration_s))


def _merge(
    llm: ChatLlm, answers: list[_Answer], budget: int, max_new_tokens: int, duration_s: float, intro: str, chunks: int,
) -> SummaryResult:
    """One result from the chunk answers: merged by the model, in rounds until one answer is left."""
    while True:
        valid = [a for a in answers if a.parsed]
        if len(valid) < len(answers):
            log.info("%d of %d answers were not valid JSON", len(answers) - len(valid), len(answers))
        if not valid:
            return SummaryResult(None, None, [], "invalid_json", "\n---\n".join(a.raw for a in answers), chunks)
        if len(valid) == 1:
            title, summary, timeline = valid[0].parsed
            return SummaryResult(title, summary, timeline, "ok", None, chunks)
        header = llm.count_tokens(MERGE) + llm.count_tokens(intro + " Part summaries:\n")
        # Parts are cut to half the room at most, so every merge prompt takes two or more and rounds end.
        parts = [_part_text(a.parsed, (budget - header) // 2, llm.count_tokens) for a in valid]
        groups = _pack(parts, budget - header, llm.count_tokens)
        answers = [
            _ask(llm, MERGE, f"{intro} Part summaries:\n" + "\n".join(group), max_new_tokens, duration_s)
            for group in groups
        ]


def _part_text(parsed: tuple[str | None, str, list[dict]], limit: int, count: Callable[[str], int]) -> str:
    title, summary, timeline = parsed
    text = json.dumps({"title": title, "summary": summary, "timeline": timeline}, ensure_ascii=False)
    if count(text) > limit:  # the timeline goes first: the merge still sees what the part was about
        text = json.dumps({"title": title, "summary": summary}, ensure_ascii=False)
    return _fit(text, limit, count)


def _pack(items: list[str], limit: int, count: Callable[[str], int]) -> list[list[str]]:
    """Consecutive groups of ``items`` whose joined token count stays within ``limit`` (long items cut)."""
    groups: list[list[str]] = [[]]
    used = 0
    for item in items:
        item = _fit(item, limit, count)
        cost = count(item + "\n")
        if groups[-1] and used + cost > limit:
            groups.append([])
            used = 0
        groups[-1].append(item)
        used += cost
    return groups


def _fit(text: str, limit: int, count: Callable[[str], int]) -> str:
    """``text`` cut (at the end, marked) until it counts at most ``limit`` tokens."""
    original, keep = text, len(text)
    while count(text + "\n") > limit and keep > 1:
        keep = max(1, min(keep - 1, int(keep * limit / count(text + "\n") * 0.9)))
        text = original[:keep].rstrip() + "…"
    return text


def _clock(seconds: float) -> str:
    whole = max(0, int(seconds))
    return f"{whole // 60:02d}:{whole % 60:02d}"
