"""How the CLI turns the toolkit's clear errors into one-line messages and exit codes."""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator

import typer


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Print a :class:`MementoLensError` (bad option, config, input file, model, run dir, output) as one line
    and exit 2. A write the environment refuses (disk full, read-only, permission) is an output error too,
    named by its file. Anything else is a bug and keeps its traceback."""
    from memento_lens.runtime.errors import MementoLensError
    from memento_lens.runtime.validate import output_error

    try:
        yield
    except MementoLensError as exc:
        _fail(exc)
    except OSError as exc:
        err = output_error(exc)
        if err is None:
            raise
        _fail(err)


def _fail(exc: BaseException) -> None:
    msg = " ".join(str(exc).split("\n"))  # one line, whatever the message held
    print(f"error: {msg}", file=sys.stderr)
    raise typer.Exit(2) from None
