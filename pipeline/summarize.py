"""Per-video summaries: what is said (and, second, what is seen), asked of a chat LLM as JSON.

The model gets the transcript and the keyframe captions, the latter with runs of (near-)identical captions
collapsed into one line over a time range. Its answer is asked for under a JSON schema (``answer_schema``)
whose bounds on lengths and counts keep the largest answer it allows within ``max_new_tokens``, so a
constrained decoder cannot run out of tokens mid-object. A timeline longer than the model's context is
summarised in chunks, and the chunk summaries are merged (in rounds, when even they do not fit at once).

A model's answer is data: whatever it says, the result is a ``SummaryResult`` whose ``status`` tells whether
valid JSON came back; a cut-off or ill-typed answer keeps what can be recovered from it, and its raw text.
"""
from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass
from difflib import SequenceMatcher
from typing import TYPE_CHECKING, Any, Callable, Generator

if TYPE_CHECKING:  # the protocol only: importing the module would import torch
    from pipeline.models.llm import ChatLlm

log = logging.getLogger(__name__)

# Room left for what token counts do not see: the chat template's markup, and estimates of endpoints.
MARGIN_TOKENS = 32
# Consecutive captions at least this similar (difflib ratio of their normalised words) are one line.
SAME_CAPTION = 0.8

SYSTEM = (
    "You summarise videos from what is said in them. You get the transcript of a video, each line starting "
    "with its time as [mm:ss], and automatic captions of its keyframes, which only hint at what is seen. "
    'Answer with one JSON object: "title" names the topic of the video, "summary" says in your own words '
    'what the speaker explains, and "timeline" lists a few key moments, each with "timestamp_s" (seconds '
    'from the start) and "text" (a few words).'
)

MERGE = (
    "You merge the summaries of consecutive parts of one video into a summary of the whole video. "
    'Answer with one JSON object: "title" names the topic of the video, "summary" says what the whole video '
    'explains, and "timeline" keeps its key moments, each with "timestamp_s" and "text".'
)

SAID_HEADER = "\nTranscript:\n"
SEEN_HEADER = "\nSeen (keyframe captions):\n"

# The answer with every string empty and no timeline item: what any answer costs before its content.
_SKELETON = '{"title":"","summary":"","timeline":[]}'
_ITEM = '{"timestamp_s":,"text":""},'
# Strings without quotes, escapes or control characters (each character in the answer is itself), and
# without leading or trailing whitespace (so a non-empty string says something).
_TEXT = r'^[^\s"\\]([^"\\\x00-\x1f]*[^\s"\\])?$'


@dataclass(frozen=True)
class SummaryResult:
    title: str | None
    summary: str | None
    timeline: list[dict]  # {"timestamp_s": float, "text": str}, sorted by time
    # "ok": valid JSON of the asked shape. "partial": the answer was cut off or ill-typed; title, summary and
    # timeline hold what could be recovered. "invalid_json": nothing usable came back. "error": no answer
    # (nothing to summarise, or the model or endpoint failed).
    status: str
    raw: str | None  # the model's answer whenever the status is not "ok"; the error for "error"
    chunks: int  # timeline chunks summarised separately (1: the whole timeline in one prompt)


@dataclass(frozen=True)
class VideoText:
    """What a video's summary is made from."""

    duration_s: float
    captions: list[tuple[float, str]]  # (timestamp_s, caption)
    segments: list[tuple[float, float, str]]  # (start_s, end_s, text)


# One question to the model: (messages, max_new_tokens, schema).
Request = tuple[list[dict], int, dict]


def summarize_videos(llm: ChatLlm, videos: list[VideoText], max_new_tokens: int) -> list[SummaryResult]:
    """Summaries of ``videos``, asked together: every round's questions of every video go to the model in
    one ``complete_many`` call (a batched generate locally, many requests in flight to a server).

    A video whose summary cannot be made (its prompt does not fit, the endpoint fails) gets an ``error``
    result saying why; the others are not held up.
    """
    steps = [_steps(llm, v, max_new_tokens) for v in videos]
    results: list[SummaryResult | None] = [None] * len(videos)
    asked: dict[int, list[Request]] = {}

    def advance(i: int, answers: list[str] | None) -> None:
        try:
            asked[i] = steps[i].send(answers)
        except StopIteration as done:
            results[i] = done.value
        except Exception as exc:  # an endpoint down, a model crash: the row stays, saying why
            log.warning("summary failed: %s", exc)
            results[i] = SummaryResult(None, None, [], "error", f"{exc.__class__.__name__}: {exc}", 0)

    for i in range(len(videos)):
        advance(i, None)
    while asked:
        order = [(i, n) for i, requests in asked.items() for n in range(len(requests))]
        replies = iter(llm.complete_many([asked[i][n] for i, n in order]))
        answered = {i: [next(replies) for _ in asked[i]] for i in list(asked)}
        asked.clear()
        for i, answers in answered.items():
            advance(i, answers)
    return results  # type: ignore[return-value]


def summarize_video(
    llm: ChatLlm,
    *,
    duration_s: float,
    captions: list[tuple[float, str]],
    segments: list[tuple[float, float, str]],
    max_new_tokens: int,
) -> SummaryResult:
    """One video's summary; raises what ``summarize_videos`` would record as an ``error`` result."""
    step = _steps(llm, VideoText(duration_s, captions, segments), max_new_tokens)
    answers = None
    while True:
        try:
            requests = step.send(answers)
        except StopIteration as done:
            return done.value
        answers = [llm.complete(messages, tokens, schema=schema) for messages, tokens, schema in requests]


def _steps(llm: ChatLlm, video: VideoText, max_new_tokens: int) -> Generator[list[Request], list, SummaryResult]:
    """The conversation for one video: yields each round's requests, receives their answers (a string, or the
    exception its request raised), returns the result."""
    duration_s = video.duration_s
    lines = timeline_lines(video.captions, video.segments)
    if not lines:
        return SummaryResult(None, None, [], "error", "summary: no captions and no transcript to summarise", 0)
    text = "".join(line for _, line in lines)
    # Text that takes more than a token a character (scripts a tokenizer splits into bytes) is answered in
    # kind: the length bounds shrink so that the answer still fits.
    schema = answer_schema(duration_s, max_new_tokens, llm.count_tokens(text) / len(text))
    budget = llm.context_tokens - max_new_tokens - MARGIN_TOKENS
    intro = f"A video of {_clock(duration_s)} ({duration_s:.0f} s). {_limits(schema)}"
    header = llm.count_tokens(SYSTEM) + llm.count_tokens(intro + " Part 00 of 00." + SAID_HEADER + SEEN_HEADER)
    if header >= budget:
        raise ValueError(
            f"summarizer context of {llm.context_tokens} tokens leaves no room for a timeline "
            f"after {max_new_tokens} new tokens and a {header}-token prompt"
        )
    chunks = _pack(lines, budget - header, llm.count_tokens)
    raws = yield [
        _request(SYSTEM, intro + (f" Part {i} of {len(chunks)}." if len(chunks) > 1 else "") + _sections(chunk),
                 max_new_tokens, schema)
        for i, chunk in enumerate(chunks, 1)
    ]
    answers = [_answer(raw, duration_s) for raw in raws]
    if len(chunks) > 1:
        log.info("summarised %d chunks; merging", len(chunks))
    # One result from the chunk answers: merged by the model, in rounds until one answer is left.
    while True:
        usable = [a for a in answers if a.parsed]
        if len(usable) < len(answers):
            log.info("%d of %d answers held nothing usable", len(answers) - len(usable), len(answers))
        if not usable:
            return SummaryResult(None, None, [], "invalid_json", "\n---\n".join(a.raw for a in answers), len(chunks))
        if len(usable) == 1:
            (answer,) = usable
            title, summary, timeline = answer.parsed
            if answer.complete:
                return SummaryResult(title, summary, timeline, "ok", None, len(chunks))
            return SummaryResult(title, summary, timeline, "partial", answer.raw, len(chunks))
        header = llm.count_tokens(MERGE) + llm.count_tokens(intro + " Part summaries:\n")
        # Parts are cut to half the room at most, so every merge prompt takes two or more and rounds end.
        parts = [("part", _part_text(a.parsed, (budget - header) // 2, llm.count_tokens)) for a in usable]
        groups = _pack(parts, budget - header, llm.count_tokens)
        raws = yield [
            _request(MERGE, f"{intro} Part summaries:\n" + "\n".join(p for _, p in group), max_new_tokens, schema)
            for group in groups
        ]
        answers = [_answer(raw, duration_s) for raw in raws]


def timeline_lines(
    captions: list[tuple[float, str]], segments: list[tuple[float, float, str]],
) -> list[tuple[str, str]]:
    """``("said", "[mm:ss] text")`` and ``("seen", "[mm:ss-mm:ss] caption")`` lines, in time order.

    A run of consecutive captions that say (nearly) the same is one line over the run's time range: a
    static shot gives many keyframes and one thing seen.
    """
    runs: list[list] = []  # [start, end, caption, normalised caption]
    for t, caption in sorted(captions, key=lambda c: c[0]):
        text = " ".join((caption or "").split())
        if not text:
            continue
        words = " ".join(re.findall(r"\w+", text.lower()))
        if runs and (runs[-1][3] == words or SequenceMatcher(None, runs[-1][3], words).ratio() >= SAME_CAPTION):
            runs[-1][1] = t
        else:
            runs.append([t, t, text, words])
    items = [(s, "seen", f"[{_span(s, e)}] {caption}") for s, e, caption, _ in runs]
    items += [(s, "said", f"[{_clock(s)}] {' '.join(x.split())}") for s, _, x in segments if x and x.strip()]
    return [(kind, line) for _, kind, line in sorted(items, key=lambda item: item[0])]


def answer_schema(duration_s: float, max_new_tokens: int, tokens_per_char: float = 1.0) -> dict:
    """The JSON schema of an answer, bounded so that the longest answer it allows fits ``max_new_tokens``.

    Strings hold no escapes, so the answer's compact JSON has no character beyond the ones counted, and an
    ASCII character costs at most one token (a token is at least one byte); ``tokens_per_char`` charges the
    strings' characters more for other scripts. One token is kept for the end of sequence.
    """
    room = max_new_tokens - 1 - len(_SKELETON)  # tokens for the strings and the timeline items
    per_char = max(1.0, tokens_per_char)
    title = min(80, int(room / 8 / per_char))
    summary = min(600, int(room * 3 / 8 / per_char))
    if title < 1 or summary < 8:
        raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room for a JSON summary; raise it")
    last = max(0, math.floor(duration_s))
    rest = room - per_char * (title + summary)
    item = len(_ITEM) + len(str(last))
    text = max(8, min(100, int((rest / 4 - item) / per_char)))
    items = min(12, int(rest // (item + per_char * text)))

    def string(limit: int) -> dict:
        return {"type": "string", "minLength": 1, "maxLength": limit, "pattern": _TEXT}

    return {
        "title": "video_summary",
        "type": "object",
        "properties": {
            "title": string(title),
            "summary": string(summary),
            "timeline": {
                "type": "array",
                "maxItems": items,
                "items": {
                    "type": "object",
                    "properties": {
                        "timestamp_s": {"type": "integer", "minimum": 0, "maximum": last},
                        "text": string(text),
                    },
                    "required": ["timestamp_s", "text"],
                    "additionalProperties": False,
                },
            },
        },
        "required": ["title", "summary", "timeline"],
        "additionalProperties": False,
    }


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


def recover_json(text: str) -> dict | None:
    """The longest parseable start of the first JSON object in ``text`` when it was cut off, or None.

    The object is closed (open string, arrays, objects) after its whole text, else after each earlier
    comma in turn, so a dangling key or half a number is dropped and a half-written string kept as far as
    it got.
    """
    start = text.find("{")
    if start < 0:
        return None
    body = text[start:]
    for end in [len(body), *(i for i in range(len(body) - 1, 0, -1) if body[i] == ",")]:
        closing = _closing(body[:end])
        if closing is None:
            continue
        try:
            value = json.loads(body[:end] + closing)
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
    fields = _fields(value, duration_s)
    if fields is None or fields[1] is None or not fields[3]:
        return None
    return fields[0], fields[1], fields[2]


@dataclass(frozen=True)
class _Answer:
    raw: str
    parsed: tuple[str | None, str | None, list[dict]] | None  # what could be read, if anything
    complete: bool  # parsed is the whole answer, of the asked shape


def _request(system: str, user: str, max_new_tokens: int, schema: dict) -> Request:
    return [{"role": "system", "content": system}, {"role": "user", "content": user}], max_new_tokens, schema


def _answer(raw: str | Exception, duration_s: float) -> _Answer:
    if isinstance(raw, Exception):  # its request failed: the video's summary fails with it
        raise raw
    whole = _fields(extract_json(raw), duration_s)
    if whole and whole[3]:
        return _Answer(raw, whole[:3], True)
    # Not the asked shape: an ill-typed object, or one cut off (whose first complete part may be a mere
    # timeline item). Either keeps what it has of a title and a summary.
    for fields in (whole, _fields(recover_json(raw), duration_s)):
        if fields and (fields[0] or fields[1]):
            return _Answer(raw, fields[:3], False)
    return _Answer(raw, None, False)


def _fields(value: Any, duration_s: float) -> tuple[str | None, str | None, list[dict], bool] | None:
    """``(title, summary, timeline, well_formed)`` read from ``value`` as far as it goes, or None."""
    if not isinstance(value, dict):
        return None
    title, summary, timeline = value.get("title"), value.get("summary"), value.get("timeline")
    well_formed = isinstance(title, (str, type(None))) and isinstance(summary, str) and bool(summary.strip())
    well_formed = well_formed and isinstance(timeline, (list, type(None)))
    items = []
    for item in timeline if isinstance(timeline, list) else []:
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
    return _text(title), _text(summary), items, well_formed


def _text(value: Any) -> str | None:
    return (value.strip() or None) if isinstance(value, str) else None


def _sections(chunk: list[tuple[str, str]]) -> str:
    """The chunk's transcript, then its captions: the speech is what the summary rests on."""
    said = [line for kind, line in chunk if kind == "said"]
    seen = [line for kind, line in chunk if kind == "seen"]
    return (SAID_HEADER + "\n".join(said) if said else "") + (SEEN_HEADER + "\n".join(seen) if seen else "")


def _part_text(parsed: tuple[str | None, str | None, list[dict]], limit: int, count: Callable[[str], int]) -> str:
    title, summary, timeline = parsed
    text = json.dumps({"title": title, "summary": summary, "timeline": timeline}, ensure_ascii=False)
    if count(text) > limit:  # the timeline goes first: the merge still sees what the part was about
        text = json.dumps({"title": title, "summary": summary}, ensure_ascii=False)
    return _fit(text, limit, count)


def _pack(items: list[tuple[str, str]], limit: int, count: Callable[[str], int]) -> list[list[tuple[str, str]]]:
    """Consecutive groups of ``(kind, text)`` items whose texts together count at most ``limit`` tokens
    (long texts cut)."""
    groups: list[list[tuple[str, str]]] = [[]]
    used = 0
    for kind, text in items:
        text = _fit(text, limit, count)
        cost = count(text + "\n")
        if groups[-1] and used + cost > limit:
            groups.append([])
            used = 0
        groups[-1].append((kind, text))
        used += cost
    return groups


def _fit(text: str, limit: int, count: Callable[[str], int]) -> str:
    """``text`` cut (at the end, marked) until it counts at most ``limit`` tokens."""
    original, keep = text, len(text)
    while count(text + "\n") > limit and keep > 1:
        keep = max(1, min(keep - 1, int(keep * limit / count(text + "\n") * 0.9)))
        text = original[:keep].rstrip() + "…"
    return text


def _closing(prefix: str) -> str | None:
    """What closes the open string, arrays and objects of a JSON prefix; None when brackets do not match."""
    stack, in_string, escaped = [], False, False
    for ch in prefix:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            stack.append("}" if ch == "{" else "]")
        elif ch in "}]":
            if not stack or stack.pop() != ch:
                return None
    return ('"' if in_string else "") + "".join(reversed(stack))


def _limits(schema: dict) -> str:
    """The schema's bounds in words, so the model plans for them rather than being cut at them."""
    props = schema["properties"]
    timeline = props["timeline"]
    return (
        f"(Lengths in characters: title up to {props['title']['maxLength']}, summary up to "
        f"{props['summary']['maxLength']}, up to {timeline['maxItems']} key moments of up to "
        f"{timeline['items']['properties']['text']['maxLength']}.)"
    )


def _span(start_s: float, end_s: float) -> str:
    start, end = _clock(start_s), _clock(end_s)
    return start if start == end else f"{start}-{end}"


def _clock(seconds: float) -> str:
    whole = max(0, int(seconds))
    return f"{whole // 60:02d}:{whole % 60:02d}"
