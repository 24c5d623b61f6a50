import re

import pytest
from rich.console import Console

from pipeline.query import QueryError, fmt_time
from pipeline.query.page import render_html
from pipeline.query.show import find_video, load_digest, print_video
from pipeline.safe_text import safe


def test_a_video_is_found_by_id_prefix_or_file_name(con):
    (vid,) = con.execute("SELECT video_id FROM videos WHERE uri LIKE '%kitchen.mp4'").fetchone()
    assert find_video(con, vid) == find_video(con, vid[:6]) == find_video(con, "kitchen.mp4") == vid
    with pytest.raises(QueryError, match="no video 'nope.mp4'"):
        find_video(con, "nope.mp4")
    with pytest.raises(QueryError, match="matches 3 videos"):
        find_video(con, "")


def test_terminal_digest_interleaves_keyframes_and_speech(con):
    console = Console(record=True, width=120)
    print_video(console, load_digest(con, find_video(con, "kitchen.mp4")))
    text = console.export_text()
    assert "Cooking dinner — Someone cooks dinner & eats an apple." in text
    lines = [line.strip() for line in text.splitlines() if re.match(r"\s+\d\d:\d\d", line)]
    assert lines == [
        "00:00.0  ▣ a yellow lamp in a kitchen",
        "00:00.5  ♪ we cook dinner at night  (to 00:02.5)",
        "00:02.0  ▣ a red apple on a table",
        "00:03.0  ♪ <b>salt</b> & pepper [bold]  (to 00:05.0)",  # printed as is, not as markup
    ]


def test_failed_video_says_why(con):
    console = Console(record=True, width=120)
    print_video(console, load_digest(con, find_video(con, "broken.mp4")))
    assert "failed: decode: moov atom not found" in console.export_text()


def test_page_is_self_contained_and_escaped(con):
    page = render_html(load_digest(con, find_video(con, "kitchen.mp4")))
    assert page.count('src="data:image/jpeg;base64,') == 4  # two keyframes: on the track and in the grid
    assert "&lt;b&gt;salt&lt;/b&gt; &amp; pepper" in page and "<b>salt" not in page
    assert not re.search(r"""(src|href)=["'](https?:|//)""", page)


def test_times_read_like_a_player():
    assert (fmt_time(0), fmt_time(65.25), fmt_time(3725.0)) == ("00:00.0", "01:05.2", "1:02:05.0")


def test_terminal_text_cannot_drive_the_terminal():
    assert safe("a\x1b[31mred\x07\ncar") == "a\\x1b[31mred\\x07\\x0acar"
