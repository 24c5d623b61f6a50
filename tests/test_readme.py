"""The README's "Read the tables elsewhere" examples, run as written on an output of known content, and what
the README says a plain Parquet glob gets wrong, measured."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import duckdb

from pipeline.store import Output, commit_shard, open_snapshot
from tests.pipeline.query.query_helpers import archive_tasks, shard_record, shard_tables, write_archive

README = Path(__file__).resolve().parent.parent / "README.md"


def _reading_examples() -> list[str]:
    text = README.read_text()
    section = text[text.index("### Read the tables elsewhere"):]
    section = section[: section.index("\n## ")] if "\n## " in section else section
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_python_reading_examples_run_as_written(tmp_path):
    write_archive(Output(str(tmp_path / "demo" / "tables")))
    examples = _reading_examples()
    assert len(examples) == 2
    for code in examples:
        # As a user runs them: a fresh process in the folder that holds demo/, its exit status included (a
        # process that read through deltalake's default filesystem aborts at exit about every other time).
        for _ in range(4):
            done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                                  timeout=120)
            assert done.returncode == 0, done.stderr
            assert "street.mp4" in done.stdout or "a red car parked on a street" in done.stdout, done.stdout
    duck, polars = (subprocess.run([sys.executable, "-c", c], cwd=tmp_path, capture_output=True, text=True,
                                   timeout=120).stdout for c in examples)
    assert "A drive through town" in duck and "Cooking dinner" in duck
    assert "a yellow lamp in a kitchen" in polars and "shape: (5, 3)" in polars


def test_a_parquet_glob_sees_replaced_files_and_delta_does_not(tmp_path):
    out = Output(str(tmp_path / "tables"))
    write_archive(out)
    kitchen = archive_tasks()[1]
    for _ in range(2):  # the kitchen video redone twice (--force): its rows replaced each time
        commit_shard(out, shard_tables(kitchen, f"{1:016x}"), shard_record(f"{1:016x}", kitchen), planned_version=-1)
    glob = duckdb.sql(f"SELECT count(*) FROM read_parquet('{tmp_path}/tables/videos/**/*.parquet')").fetchall()[0][0]
    delta = open_snapshot(out.uri).read("videos").num_rows
    assert delta == 3  # street, broken, kitchen
    assert glob == 5  # and the kitchen row of each replaced version, until vacuum deletes those files
