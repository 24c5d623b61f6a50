"""The query commands as users type them, on the hand-built archive (search itself: test_query_tiny.py)."""
import json

import pytest



def test_sql_prints_a_table_or_json_lines(reelscope, archive):
    code, out, _ = reelscope("sql", "SELECT uri, status FROM videos ORDER BY uri", "--output", archive)
    assert code == 0 and "file:///archive/broken.mp4" in out and "3 rows" in out
    code, out, _ = reelscope("sql", "SELECT uri, duration_s FROM videos ORDER BY uri", "--output", archive, "--json")
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and rows[1] == {"uri": "file:///archive/kitchen.mp4", "duration_s": 6.0}


def test_show_in_the_terminal_and_as_a_page(reelscope, archive, tmp_path):
    code, out, _ = reelscope("show", "street.mp4", "--output", archive)
    assert code == 0 and "▣ blue sky over the city" in out and "♪ birds are singing in the trees" in out
    page = tmp_path / "pages" / "street.html"
    code, out, _ = reelscope("show", "street.mp4", "--output", archive, "--html", page)
    assert code == 0 and out.strip() == str(page) and page.read_text().count("data:image/jpeg") == 6


@pytest.mark.parametrize(
    "args, message",
    [
        (["sql", "SELECT 1", "--output", "{tmp}/missing"], "output {tmp}/missing does not exist"),
        (["sql", "SELECT 1", "--output", "{tmp}"], "no reelscope tables under {tmp}"),
        (["search", "red", "--output", "{tmp}/missing"], "output {tmp}/missing does not exist"),
        (["show", "x", "--output", "{tmp}"], "no reelscope tables under {tmp}"),
        (["sql", "SELEC 1", "--output", "{archive}"], 'Parser Error: syntax error at or near "SELEC"'),
        (["show", "nope.mp4", "--output", "{archive}"], "no video 'nope.mp4' in this output"),
        (["search", "red", "--output", "{archive}", "--model", "openai/clip-vit-base-patch32"],
         "no keyframes were embedded with 'openai/clip-vit-base-patch32'; this output holds 'test:colour' (5 keyframes)"),
        (["search", "red", "--output", "{archive}", "--image", "{tmp}/notes.txt"], "is not an image"),
    ],
)
def test_errors_are_one_line(reelscope, archive, tmp_path, args, message):
    (tmp_path / "notes.txt").write_text("not a picture")
    code, out, err = reelscope(*[a.format(tmp=tmp_path, archive=archive) for a in args])
    assert code == 2 and out == ""
    assert err.startswith("reelscope: error:") and err.count("reelscope:") == 1
    assert message.format(tmp=tmp_path) in err
