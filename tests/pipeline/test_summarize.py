"""Summaries: prompt building, JSON parsing and validation, chunking and merging.

The parsing and chunking logic is driven by a scripted ChatLlm (a test double of the protocol, not a model);
the tiny random-weight LLM shows what happens with a real model that answers nonsense.
"""
from __future__ import annotations

import json

import pytest

from pipeline.summarize import SummaryResult, extract_json, summarize_video, timeline_lines, validate

CAPTIONS = [(0.0, "a title card"), (12.5, "a man in a kitchen"), (65.0, "a plate of pasta")]
SEGMENTS = [(3.0, 9.0, "Welcome to the show."), (40.0, 50.0, "Now we boil the water.")]
GOOD = {"title": "Cooking pasta", "summary": "A man cooks pasta.",
        "timeline": [{"timestamp_s": 40, "text": "water boils"}, {"timestamp_s": 3.0, "text": "welcome"}]}


class ScriptedLlm:
    """Answers from a list (or a function of the prompt); counts tokens as words."""

    name = "scripted"

    def __init__(self, answers, context_tokens: int = 4096):
        self.answers = answers
        self.context_tokens = context_tokens
        self.prompts: list[list[dict]] = []

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def complete(self, messages: list[dict], max_new_tokens: int) -> str:
        self.prompts.append(messages)
        if callable(self.answers):
            return self.answers(messages)
        return self.answers[len(self.prompts) - 1]


def _summarize(llm, **kw) -> SummaryResult:
    args = dict(duration_s=70.0, captions=CAPTIONS, segments=SEGMENTS, max_new_tokens=64) | kw
    return summarize_video(llm, **args)


def test_timeline_is_time_ordered_and_labelled():
    assert timeline_lines(CAPTIONS, SEGMENTS) == [
        "[00:00] caption: a title card",
        "[00:03] said: Welcome to the show.",
        "[00:12] caption: a man in a kitchen",
        "[00:40] said: Now we boil the water.",
        "[01:05] caption: a plate of pasta",
    ]


def test_valid_answer_in_one_prompt():
    llm = ScriptedLlm([json.dumps(GOOD)])
    result = _summarize(llm)
    assert result == SummaryResult(
        "Cooking pasta", "A man cooks pasta.",
        [{"timestamp_s": 3.0, "text": "welcome"}, {"timestamp_s": 40.0, "text": "water boils"}], "ok", None, 1,
    )
    (messages,) = llm.prompts
    assert messages[0]["role"] == "system" and "timestamp_s" in messages[0]["content"]
    assert "[00:40] said: Now we boil the water." in messages[1]["content"] and "70 s" in messages[1]["content"]


@pytest.mark.parametrize("wrapped", [
    "```json\n{body}\n```",
    "Sure! Here is the summary:\n```\n{body}\n```\nHope it helps.",
    "The JSON is {body} -- done.",
    "{{not json}} then {body}",
])
def test_json_is_found_in_fences_and_prose(wrapped):
    result = _summarize(ScriptedLlm([wrapped.format(body=json.dumps(GOOD))]))
    assert result.status == "ok" and result.title == "Cooking pasta"


def test_prose_without_json_is_invalid_and_kept():
    result = _summarize(ScriptedLlm(["I cannot summarise this video."]))
    assert result == SummaryResult(None, None, [], "invalid_json", "I cannot summarise this video.", 1)


@pytest.mark.parametrize("bad", [
    {"title": "t", "summary": 42, "timeline": []},
    {"title": ["t"], "summary": "s", "timeline": []},
    {"title": "t", "summary": "s", "timeline": "at 0:40 water boils"},
    {"title": "t", "summary": "   "},
    ["not", "an", "object"],
])
def test_wrong_types_are_invalid(bad):
    result = _summarize(ScriptedLlm([json.dumps(bad)]))
    assert result.status == "invalid_json" and result.raw == json.dumps(bad) and result.timeline == []


def test_bad_timeline_items_are_dropped():
    answer = {"title": "t", "summary": "s", "timeline": [
        {"timestamp_s": 10, "text": "ok"}, {"timestamp_s": "00:10", "text": "string time"},
        {"timestamp_s": 99, "text": "after the end"}, {"timestamp_s": -1, "text": "before the start"},
        {"timestamp_s": True, "text": "bool"}, {"timestamp_s": 5, "text": 7}, "not a dict",
    ]}
    result = _summarize(ScriptedLlm([json.dumps(answer)]))
    assert result.status == "ok" and result.timeline == [{"timestamp_s": 10.0, "text": "ok"}]


def test_missing_title_and_timeline_are_allowed():
    for answer in ('{"summary": "only a summary"}', '{"title": "", "summary": "only a summary", "timeline": null}'):
        result = _summarize(ScriptedLlm([answer]))
        assert (result.status, result.title, result.summary, result.timeline) == ("ok", None, "only a summary", [])


def _chunk_then_merge(messages):
    user = messages[-1]["content"]
    if "Part summaries:" in user:
        return json.dumps({"title": "merged", "summary": f"{user.count('summary')} parts",
                           "timeline": [{"timestamp_s": 1, "text": "start"}]})
    first = float(user.split("said: line ")[1].split()[0])  # the chunk's first line number
    return json.dumps({"title": f"part {first:.0f}", "summary": f"from line {first:.0f}",
                       "timeline": [{"timestamp_s": first, "text": "x"}]})


def test_long_timeline_is_chunked_and_merged():
    segments = [(float(i), i + 1.0, f"line {i} " + "word " * 20) for i in range(60)]
    llm = ScriptedLlm(_chunk_then_merge, context_tokens=400)
    result = summarize_video(llm, duration_s=70.0, captions=[], segments=segments, max_new_tokens=64)
    assert result.status == "ok" and result.title == "merged"
    assert result.chunks > 1
    chunk_prompts = [m for m in llm.prompts if "Part summaries:" not in m[-1]["content"]]
    assert len(chunk_prompts) == result.chunks
    # Every timeline line went into exactly one chunk, in order, and every prompt fits the context.
    seen = [line for m in chunk_prompts for line in m[-1]["content"].splitlines() if "said:" in line]
    assert seen == timeline_lines([], segments)
    assert all(sum(llm.count_tokens(x["content"]) for x in m) <= 400 - 64 for m in llm.prompts)


def test_merge_runs_in_rounds_when_parts_do_not_fit_at_once():
    segments = [(float(i), i + 1.0, f"line {i} " + "word " * 30) for i in range(70)]
    llm = ScriptedLlm(_chunk_then_merge, context_tokens=260)
    result = summarize_video(llm, duration_s=70.0, captions=[], segments=segments, max_new_tokens=40)
    merges = [m for m in llm.prompts if "Part summaries:" in m[-1]["content"]]
    assert result.status == "ok" and len(merges) > 1
    assert all(sum(llm.count_tokens(x["content"]) for x in m) <= 260 - 40 for m in llm.prompts)


def test_invalid_chunks_are_left_out_of_the_merge():
    def answers(messages):
        user = messages[-1]["content"]
        if "Part summaries:" in user:
            return json.dumps({"title": "merged", "summary": user})
        return "garbage" if "line 0 " in user else _chunk_then_merge(messages)

    segments = [(float(i), i + 1.0, f"line {i} " + "word " * 20) for i in range(60)]
    result = summarize_video(ScriptedLlm(answers, context_tokens=400), duration_s=70.0, captions=[],
                             segments=segments, max_new_tokens=64)
    assert result.status == "ok" and "garbage" not in result.summary and "from line" in result.summary


def test_all_chunks_invalid_keeps_every_raw_answer():
    segments = [(float(i), i + 1.0, f"line {i} " + "word " * 20) for i in range(60)]
    llm = ScriptedLlm(lambda m: "no", context_tokens=400)
    result = summarize_video(llm, duration_s=70.0, captions=[], segments=segments, max_new_tokens=64)
    assert result.status == "invalid_json" and result.raw.split("\n---\n") == ["no"] * result.chunks


def test_an_overlong_line_is_cut_to_fit():
    llm = ScriptedLlm(lambda m: json.dumps(GOOD), context_tokens=300)
    result = summarize_video(llm, duration_s=70.0, captions=[(1.0, "word " * 1000)], segments=[], max_new_tokens=64)
    assert result.status == "ok" and result.chunks == 1
    assert "…" in llm.prompts[0][-1]["content"]


def test_nothing_to_summarise_needs_no_model():
    llm = ScriptedLlm([])
    result = summarize_video(llm, duration_s=10.0, captions=[(1.0, "  ")], segments=[], max_new_tokens=64)
    assert result.status == "error" and result.chunks == 0 and llm.prompts == []


def test_a_context_too_small_for_the_instructions_is_a_config_error():
    with pytest.raises(ValueError, match="no room"):
        _summarize(ScriptedLlm([]), max_new_tokens=4000)


def test_extract_and_validate_helpers():
    assert extract_json('x {"a": {"b": 1}} y {"c": 2}') == {"a": {"b": 1}}
    assert extract_json("[1, 2]") is None and extract_json("") is None
    assert validate({"summary": "s", "timeline": [{"timestamp_s": 70, "text": "end"}]}, 70.0) == (
        None, "s", [{"timestamp_s": 70.0, "text": "end"}])


def test_tiny_llm_answers_nonsense_and_says_so(model_cache):
    from pipeline.models.llm import LocalChatLlm
    from pipeline.models.store import resolve

    llm = LocalChatLlm(resolve("tiny:llm", "llm", model_cache), context_tokens=512)
    result = summarize_video(llm, duration_s=70.0, captions=CAPTIONS, segments=SEGMENTS, max_new_tokens=48)
    assert result.status == "invalid_json" and result.raw and result.title is None and result.timeline == []
    assert result.chunks >= 1
