"""How the CLI turns the toolkit's clear errors into one-line messages and exit codes."""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator

import typer


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Print expected errors (bad config, bad input, bad run dir) as one line and exit 2."""
    from memento_lens.runtime.errors import MementoLensError

    try:
        yield
    except (MementoLensError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None
