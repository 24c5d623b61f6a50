"""The driver's memory while a long video goes through the pipeline: media must stay out of it.

    .venv/bin/python benchmarks/driver_memory.py [--hours 2] [--workdir DIR]

Makes a video of ``--hours`` with ffmpeg (a few colour scenes at 1 frame a second, 160x120, and a tone
throughout, so its decoded audio alone is 460 MB a 2 hours), runs the tiny profile over it in this process,
and prints the driver's peak resident memory (``ru_maxrss``) before and after the run, with the size of the
decoded audio for scale. Not part of the test suite.
"""
from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from pipeline.config import load_config
from pipeline.media.synth import make_video
from pipeline.run import run


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hours", type=float, default=2.0)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="reelscope-memory-"))
    seconds = args.hours * 3600
    scenes = [(colour, seconds / 4) for colour in ("red", "lime", "blue", "gray")]
    start = time.perf_counter()
    video = make_video(work / "media" / "long.mp4", scenes, fps=1, size=(160, 120), tone_hz=440.0, gop=600)
    made = time.perf_counter() - start
    before = _peak_mb()
    start = time.perf_counter()
    summary = run(load_config(str(video.parent), str(work / "tables"), "tiny"))
    took = time.perf_counter() - start
    after = _peak_mb()
    assert summary.ok == 1, summary.failures
    table = Table(title=f"a {args.hours:g} h video through the tiny profile (made in {made:.0f} s, run in {took:.0f} s)")
    table.add_column("measure")
    table.add_column("MB", justify="right")
    table.add_row("decoded 16 kHz float32 audio of the video", f"{seconds * 16000 * 4 / 1e6:.0f}")
    table.add_row("driver peak RSS before the run (imports only, no Ray yet)", f"{before:.0f}")
    table.add_row("driver peak RSS after the run", f"{after:.0f}")
    Console(width=120).print(table)


if __name__ == "__main__":
    main()
