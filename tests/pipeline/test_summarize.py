"""Summaries: prompt building, answer schema, JSON parsing, recovery and validation, chunking and merging.

The parsing and chunking logic is driven by a scripted ChatLlm (a test double of the protocol, not a model);
the tiny random-weight LLM shows what constrained decoding makes of a real model that knows nothing.
"""
from __future__ import annotations

import json

import pytest

from pipeline.summarize import (
    SummaryResult, VideoText, answer_schema, extract_json, recover_json, summarize_video, summarize_videos,
    timeline_lines, validate,
)

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
        self.calls: list[int] = []  # requests per complete_many call
        self.schemas: list[dict | None] = []

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def complete(self, messages: list[dict], max_new_tokens: int, schema: dict | None = None) -> str:
        self.prompts.append(messages)
        self.schemas.append(schema)
        if callable(self.answers):
            return self.answers(messages)
        return self.answers[len(self.prompts) - 1]


    def complete_many(self, requests):
        self.calls.append(len(requests))
        answers = []
        for messages, max_new_tokens, schema in requests:
            try:
                answers.append(self.complete(messages, max_new_tokens, schema=schema))
            except Exception as exc:
                answers.append(exc)
        return answers


def _summarize(llm, **kw) -> SummaryResult:
    args = dict(duration_s=70.0, captions=CAPTIONS, segments=SEGMENTS, max_new_tokens=64) | kw
    return summarize_video(llm, **args)


def test_timeline_is_time_ordered_and_labelled():
    assert timeline_lines(CAPTIONS, SEGMENTS) == [
        ("seen", "[00:00] a title card"),
        ("said", "[00:03] Welcome to the show."),
        ("seen", "[00:12] a man in a kitchen"),
        ("said", "[00:40] Now we boil the water."),
        ("seen", "[01:05] a plate of pasta"),
    ]


def test_runs_of_similar_captions_are_one_line_over_their_time_range():
    captions = [
        (0.0, "a man in a kitchen"), (4.0, "A man in a kitchen."), (9.5, "a man standing in a kitchen"),
        (20.0, "a plate of pasta"), (30.0, "a man in a kitchen"), (31.2, "a  man in a kitchen"),
    ]
    assert timeline_lines(captions, []) == [
        ("seen", "[00:00-00:09] a man in a kitchen"),
        ("seen", "[00:20] a plate of pasta"),  # different: a line of its own
        ("seen", "[00:30-00:31] a man in a kitchen"),  # the same again later: not merged across the plate
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
    user = messages[1]["content"]
    # The transcript first, the captions after it as the secondary source.
    assert user.index("Transcript:\n[00:03] Welcome to the show.\n[00:40] Now we boil the water.") < user.index(
        "[00:12] a man in a kitchen")
    assert "70 s" in user
    assert llm.schemas == [answer_schema(70.0, 64)]


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


@pytest.mark.parametrize(("bad", "title", "summary"), [
    ({"title": "t", "summary": 42, "timeline": []}, "t", None),
    ({"title": ["t"], "summary": "s", "timeline": []}, None, "s"),
    ({"title": "t", "summary": "s", "timeline": "at 0:40 water boils"}, "t", "s"),
    ({"title": "t", "summary": "   "}, "t", None),
])
def test_wrong_types_keep_what_they_can(bad, title, summary):
    result = _summarize(ScriptedLlm([json.dumps(bad)]))
    assert (result.status, result.title, result.summary, result.timeline) == ("partial", title, summary, [])
    assert result.raw == json.dumps(bad)


@pytest.mark.parametrize("bad", [["not", "an", "object"], {"title": 1, "summary": None}, {"other": "keys"}])
def test_nothing_usable_is_invalid(bad):
    result = _summarize(ScriptedLlm([json.dumps(bad)]))
    assert result == SummaryResult(None, None, [], "invalid_json", json.dumps(bad), 1)


@pytest.mark.parametrize(("cut", "title", "summary", "timeline"), [
    ('{"title":"Cooking pasta","summary":"A man cooks pa', "Cooking pasta", "A man cooks pa", []),
    ('{"title":"Cooking pasta","summary":"A man cooks pasta.","timel', "Cooking pasta", "A man cooks pasta.", []),
    ('{"title":"Cooking pasta","summary":"A man cooks pasta.","timeline":[{"timestamp_s":3,"text":"welcome"},'
     '{"timestamp_s":40,"te', "Cooking pasta", "A man cooks pasta.", [{"timestamp_s": 3.0, "text": "welcome"}]),
    ('Sure: {"title": "Cooking pasta", "summ', "Cooking pasta", None, []),
])
def test_a_cut_off_answer_keeps_what_it_got(cut, title, summary, timeline):
    result = _summarize(ScriptedLlm([cut]))
    assert result == SummaryResult(title, summary, timeline, "partial", cut, 1)


def test_recover_json_closes_what_is_open():
    assert recover_json('{"a": "x, y", "b": [1, {"c": "q\\"u') == {"a": "x, y", "b": [1, {"c": 'q"u'}]}
    assert recover_json('{"a": [1, 2') == {"a": [1, 2]}
    assert recover_json('{"a": 1, "b": tr') == {"a": 1}
    assert recover_json('{"a": 1, "b":') == {"a": 1}
    assert recover_json("no object") is None and recover_json('{"a": ]') is None


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
    first = float(user.split("] line ")[1].split()[0])  # the chunk's first line number
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
    seen = [line for m in chunk_prompts for line in m[-1]["content"].splitlines() if "] line " in line]
    assert seen == [line for _, line in timeline_lines([], segments)]
    assert all(sum(llm.count_tokens(x["content"]) for x in m) <= 400 - 64 for m in llm.prompts)


def test_merge_runs_in_rounds_when_parts_do_not_fit_at_once():
    segments = [(float(i), i + 1.0, f"line {i} " + "word " * 30) for i in range(70)]
    llm = ScriptedLlm(_chunk_then_merge, context_tokens=300)
    result = summarize_video(llm, duration_s=70.0, captions=[], segments=segments, max_new_tokens=64)
    merges = [m for m in llm.prompts if "Part summaries:" in m[-1]["content"]]
    assert result.status == "ok" and len(merges) > 1
    assert all(sum(llm.count_tokens(x["content"]) for x in m) <= 300 - 64 for m in llm.prompts)


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


def test_a_cut_off_merge_is_partial():
    def answers(messages):
        if "Part summaries:" in messages[-1]["content"]:
            return '{"title":"merged","summary":"all of it, until'
        return _chunk_then_merge(messages)

    segments = [(float(i), i + 1.0, f"line {i} " + "word " * 20) for i in range(60)]
    result = summarize_video(ScriptedLlm(answers, context_tokens=400), duration_s=70.0, captions=[],
                             segments=segments, max_new_tokens=64)
    assert (result.status, result.title, result.summary) == ("partial", "merged", "all of it, until")
    assert result.raw == '{"title":"merged","summary":"all of it, until' and result.chunks > 1


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


def _largest(schema: dict) -> str:
    """The longest answer ``schema`` allows, as compact JSON."""
    props = schema["properties"]
    item = props["timeline"]["items"]["properties"]
    longest = {
        "title": "T" * props["title"]["maxLength"],
        "summary": "S" * props["summary"]["maxLength"],
        "timeline": [{"timestamp_s": item["timestamp_s"]["maximum"], "text": "X" * item["text"]["maxLength"]}]
        * props["timeline"]["maxItems"],
    }
    return json.dumps(longest, separators=(",", ":"))


@pytest.mark.parametrize("max_new_tokens", [64, 128, 384, 1536, 2048, 8192])
@pytest.mark.parametrize("duration_s", [0.0, 9.9, 70.0, 3599.5, 86400.0])
def test_the_largest_answer_fits_the_token_budget(max_new_tokens, duration_s):
    schema = answer_schema(duration_s, max_new_tokens)
    # A token is at least one ASCII character; one token is left for the end of sequence.
    assert len(_largest(schema)) <= max_new_tokens - 1
    props = schema["properties"]
    assert props["timeline"]["items"]["properties"]["timestamp_s"] == {
        "type": "integer", "minimum": 0, "maximum": int(duration_s)}
    assert schema["additionalProperties"] is False and set(schema["required"]) == {"title", "summary", "timeline"}
    if max_new_tokens >= 384:  # room for a real answer, not only for a well-formed one
        assert props["title"]["maxLength"] >= 40 and props["summary"]["maxLength"] >= 120
        assert props["timeline"]["maxItems"] >= 3
    # Denser text (more tokens a character) gets shorter strings.
    if max_new_tokens >= 128:
        dense = answer_schema(duration_s, max_new_tokens, tokens_per_char=2.5)
        props = dense["properties"]
        chars = props["title"]["maxLength"] + props["summary"]["maxLength"] + props["timeline"]["maxItems"] * (
            props["timeline"]["items"]["properties"]["text"]["maxLength"])
        assert len(_largest(dense)) + 1.5 * chars <= max_new_tokens - 1


def test_a_budget_too_small_for_any_answer_is_a_config_error():
    with pytest.raises(ValueError, match="max_new_tokens=40"):
        _summarize(ScriptedLlm([]), max_new_tokens=40)


def test_extract_and_validate_helpers():
    assert extract_json('x {"a": {"b": 1}} y {"c": 2}') == {"a": {"b": 1}}
    assert extract_json("[1, 2]") is None and extract_json("") is None
    assert validate({"summary": "s", "timeline": [{"timestamp_s": 70, "text": "end"}]}, 70.0) == (
        None, "s", [{"timestamp_s": 70.0, "text": "end"}])


def test_tiny_llm_answers_nonsense_in_valid_json(model_cache):
    from pipeline.models.llm import LocalChatLlm
    from pipeline.models.store import resolve

    llm = LocalChatLlm(resolve("tiny:llm", "llm", model_cache), context_tokens=1024)
    result = summarize_video(llm, duration_s=70.0, captions=CAPTIONS, segments=SEGMENTS, max_new_tokens=128)
    # Random weights say nothing, but under the schema they say it as an answer of the asked shape.
    assert result.status == "ok" and result.raw is None and result.chunks == 1
    assert result.title and result.summary
    assert all(0 <= item["timestamp_s"] <= 70 and item["text"] for item in result.timeline)


def test_many_videos_are_asked_together_round_by_round():
    def answer(messages):
        if "boom" in messages[-1]["content"]:
            raise ConnectionError("endpoint went away")
        return _chunk_then_merge(messages) if "] line " in messages[-1]["content"] or "Part summaries" in \
            messages[-1]["content"] else json.dumps(GOOD)

    llm = ScriptedLlm(answer, context_tokens=400)  # the long video needs chunks and a merge round
    long_segments = [(float(i), i + 1.0, f"line {i} " + "word " * 20) for i in range(60)]
    videos = [
        VideoText(70.0, CAPTIONS, SEGMENTS),
        VideoText(70.0, [], long_segments),
        VideoText(70.0, [], [(1.0, 2.0, "boom")]),
        VideoText(70.0, [], []),
    ]
    results = summarize_videos(llm, videos, max_new_tokens=64)
    assert results[0].status == "ok" and results[0].chunks == 1 and results[0].title == "Cooking pasta"
    assert results[1].status == "ok" and results[1].chunks > 1 and results[1].title == "merged"
    assert results[2].status == "error" and results[2].raw == "ConnectionError: endpoint went away"
    assert results[3].status == "error" and "no transcript to summarise" in results[3].raw
    # Round one asks every video's first questions in one call; later rounds only the long video's merges.
    assert llm.calls[0] == 1 + results[1].chunks + 1 and len(llm.calls) >= 2
    assert sum(llm.calls) == len(llm.prompts)
