"""Names, errors and model text from the data never drive the terminal and are never read as rich markup,
in any command: escape sequences come out escaped and visible, markup comes out as the characters it is."""
from __future__ import annotations

import datetime as dt
import numpy as np
import pytest

from pipeline.discover import video_id_for
from pipeline.rows import build_tables
from pipeline.store import Output, commit_shard
from schemas.commit import CommitRecord
from tests.pipeline.query.query_helpers import archive_tasks

CLEAR, TITLE, C1 = "\x1b[2J", "\x1b]0;pwned\x07", "\x9b31m"
LINK, CLOSE = "[link=file:///etc/passwd]x[/link]", "[/x]"
OPEN = "[link=file:passwd]x[bold]"  # what a file name can hold of markup: no "/"
NAME = f"evil{CLEAR}{TITLE}{OPEN}.mp4"
RAW = ("\x1b", "\x07", "\x9b")  # what must never be printed as such
DIM = 16  # the tiny CLIP's width: search loads it for real


def _hostile(task, uri: str, text: str):
    """``task`` renamed to ``uri``, its captions and speech carrying ``text``."""
    task.uri, task.video_id = uri, video_id_for(uri)
    for f in task.frames:
        f.caption = f"{f.caption} {text}"
        f.embedding = np.random.default_rng(f.frame_index).standard_normal(DIM).astype(np.float32)
        f.embedding /= np.linalg.norm(f.embedding)
    for s in task.segments:
        s.text = f"{s.text} {text}"
    task.models["embedding"] = "tiny:clip"
    return task


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> str:
    """A committed output whose file names, error, captions and transcript hold escapes and markup."""
    (street, broken), (kitchen,) = archive_tasks()
    tasks = [_hostile(street, f"file:///archive/{NAME}", f"red {CLEAR}{CLOSE}"),
             _hostile(kitchen, f"file:///archive/kitchen{TITLE}.mp4", f"{LINK}{C1}")]
    broken.error = f"decode: moov atom not found {CLOSE} {TITLE} {C1}"
    tasks.append(broken)
    output = Output(str(tmp_path_factory.mktemp("hostile") / "tables"))
    tables = build_tables(tasks, shard_id="0" * 16, config_fingerprint="cfg", embedding_dim=DIM,
                          model_names={"asr": "test:asr", "summary": "test:llm"},
                          processed_at=dt.datetime(2026, 11, 23, tzinfo=dt.timezone.utc))
    record = CommitRecord(run="test", shard_id="0" * 16, config_fingerprint="cfg", profile="tiny",
                          models={"embedding": "tiny:clip"}, embedding_dim=DIM)
    commit_shard(output, tables, record, planned_version=-1)
    return output.uri


@pytest.fixture
def reelscope(cli_run):
    """(exit code, stdout + stderr) of the real entry point."""
    return lambda *args: (lambda code, out, err: (code, out + err))(*cli_run(*args))


def _assert_safe(text: str) -> None:
    assert not any(c in text for c in RAW), repr(text)
    assert "MarkupError" not in text and "Traceback" not in text, text


@pytest.mark.parametrize("args", [
    ["digest"],
    ["show", NAME],
    ["show", "broken.mp4"],
    ["search", "red"],
    ["search", "red", "--json"],
    ["sql", "SELECT uri, error FROM videos ORDER BY uri"],
    ["sql", "SELECT uri, error FROM videos ORDER BY uri", "--json"],
    ["sql", f"SELECT 1 AS \"{CLOSE}{LINK}\""],
])
def test_query_commands_print_data_escaped_and_literal(reelscope, hostile, args):
    code, shown = reelscope(*args, "--output", hostile)
    assert code == 0, shown
    _assert_safe(shown)
    if "--json" not in args:  # JSON carries the same characters as JSON escapes (\u001b)
        assert "\\x1b" in shown or args[0] == "sql" and "1 row" in shown
    if args[0] != "search":  # (search cuts its columns to the terminal's width)
        assert CLOSE in shown  # printed as the characters it is, not swallowed as a closing tag


def test_digest_shows_markup_in_names_as_text(reelscope, hostile):
    code, shown = reelscope("digest", "--output", hostile)
    assert code == 0 and f"evil\\x1b[2J\\x1b]0;pwned\\x07{OPEN}.mp4" in shown, shown
    assert LINK in shown  # a kitchen caption
    assert "failed: decode: moov atom not found [/x] \\x1b]0;pwned\\x07 \\x9b31m" in shown


def test_errors_that_quote_the_input_are_escaped(reelscope, tmp_path):
    # ("[" would make it a glob, which finds nothing rather than fails)
    code, shown = reelscope("run", tmp_path / f"missing{TITLE}{C1}", "--output", tmp_path / "out")
    assert code == 2 and f"input not found: {tmp_path}/missing\\x1b]0;pwned\\x07\\x9b31m" in shown, shown
    _assert_safe(shown)


def test_run_progress_failures_and_summary_are_escaped(reelscope, tmp_path, ray_session):
    media = tmp_path / "media"
    media.mkdir()
    (media / f"{CLEAR}{TITLE}{OPEN}.mp4").write_bytes(b"not a video " * 100)
    code, shown = reelscope("run", media, "--output", tmp_path / "out")
    assert code == 1  # every video failed
    _assert_safe(shown)
    assert "failed: file://" in shown and f"\\x1b[2J\\x1b]0;pwned\\x07{OPEN}.mp4: decode:" in shown, shown
