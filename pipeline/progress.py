"""Progress bar while a run works and the short table it ends with.

Descriptions and failure lines are printed as plain text, escaped (``pipeline.safe_text``): a failure quotes
the file's name and its error, which come from outside.
"""
from __future__ import annotations

from typing import Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from pipeline.safe_text import safe


class RunProgress:
    """A rich progress bar over videos; ``update`` is the ``progress`` callback of ``pipeline.run.run``.

    ``on_update`` is called with every step (the CLI keeps its signal handler in place with it);
    ``shards_committed`` counts the shards committed so far, for the line an interrupted run ends with.
    """

    def __init__(self, console: Console, on_update: Callable[[], None] = lambda: None):
        self.progress = Progress(
            TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=console, transient=False, disable=not console.is_terminal,
        )
        self.console = console
        self.on_update = on_update
        self.task = None
        self.last = None
        self.shards_committed = 0

    def __enter__(self) -> "RunProgress":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def update(self, description: str, done: int, total: int) -> None:
        self.on_update()
        description = safe(description)
        if description.endswith(": committed"):  # pipeline.run reports each committed shard so
            self.shards_committed += 1
        if self.task is None:
            self.task = self.progress.add_task(description, total=total)
        self.progress.update(self.task, description=description, completed=done, total=total)
        if not self.console.is_terminal and description != self.last:
            # Logs of scheduled runs (Airflow, CI) get one line per step instead of a bar.
            self.console.print(f"[{done}/{total}] {description}", markup=False, highlight=False)
        self.last = description


def print_summary(console: Console, summary) -> None:
    table = Table(title="reelscope run", show_header=False, title_justify="left")
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("videos found", str(summary.discovered))
    table.add_row("processed ok", str(summary.ok))
    table.add_row("failed", str(summary.failed))
    table.add_row("skipped (already done)", str(summary.skipped))
    table.add_row("shards committed", str(summary.shards))
    table.add_row("keyframes", str(summary.keyframes))
    table.add_row("transcript segments", str(summary.segments))
    table.add_row("summaries", str(summary.summaries))
    table.add_row("wall time", f"{summary.wall_s:.1f} s")
    for name, seconds in summary.stage_seconds.items():
        table.add_row(f"  {name}", f"{seconds:.1f} s")
    pools = getattr(summary, "pools", {})
    if pools:
        table.add_row("Ray nodes that did work", str(len({n for pool in pools.values() for n in pool["nodes"]})))
    for name, pool in pools.items():
        if "actors" in pool:  # a model stage's pool: its width at most, and how busy its models were
            table.add_row(f"  {name} pool", f"{pool['actors']} actor(s), {100 * pool['busy_share']:.0f}% busy")
    console.print(table)
    for uri, error in summary.failures:
        console.print(safe(f"failed: {uri}: {error}"), markup=False, highlight=False, soft_wrap=True)
