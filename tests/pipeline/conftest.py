"""The real ``reelscope`` entry point, run in-process, for the command-line tests of tests/pipeline."""
from __future__ import annotations

import sys

import pytest

from pipeline import cli


@pytest.fixture
def cli_run(monkeypatch, capsys, model_cache):
    """``cli_run(*args) -> (exit status, stdout, stderr)``, with the session's model cache."""
    monkeypatch.setenv("REELSCOPE_CACHE", model_cache)

    def run(*args):
        monkeypatch.setattr(sys, "argv", ["reelscope", *map(str, args)])
        with pytest.raises(SystemExit) as exit_:
            cli.main()
            sys.exit(0)
        captured = capsys.readouterr()
        return exit_.value.code or 0, captured.out, captured.err

    return run
