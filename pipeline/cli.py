"""reelscope command line: run | sample | digest (and the query commands)."""
from __future__ import annotations

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
    from pipeline.tables import OutputError

    return (UserError, ConfigError, InputError, OutputError, ModelLoadError, FileNotFoundError, PermissionError)


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
        force=force or None, shard_size=shard_size, ray_address=ray_address, device=device,
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


@app.command()
def digest(output: str = typer.Option(..., "--output", "-o", help="Output root written by `reelscope run`.")) -> None:
    """Per video: status, duration, keyframes, segments and the summary."""
    from pipeline.digest import print_digest

    print_digest(out, output)


def main() -> None:
    try:
        app(standalone_mode=False)
    except _user_errors() as exc:
        err.print(f"reelscope: error: {exc}", markup=False, highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("reelscope: interrupted", markup=False)
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:  # click's usage errors and aborts arrive here in standalone_mode=False
        import click

        if isinstance(exc, click.ClickException):
            err.print(f"reelscope: error: {exc.format_message()}", markup=False, highlight=False)
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            sys.exit(1)
        raise


if __name__ == "__main__":
    main()
