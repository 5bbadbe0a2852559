"""Small CLI behaviours a user meets first: what a command says while it waits, and what it prints."""

from __future__ import annotations

import io

import pytest

pytestmark = pytest.mark.unit


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_schedule_on_a_terminal_says_what_it_waits_for(capsys):
    from memento_lens.cli_runtime import _read_stdin

    assert _read_stdin(False, _Terminal('{"prompt": []}')) == '{"prompt": []}'
    err = capsys.readouterr().err
    assert "reading one JSON case from stdin" in err and "Ctrl-D" in err and "--input" in err
    _read_stdin(True, _Terminal("[]"))
    assert "a JSON list of cases" in capsys.readouterr().err


def test_schedule_from_a_pipe_stays_silent(capsys):
    from memento_lens.cli_runtime import _read_stdin

    assert _read_stdin(False, io.StringIO("{}")) == "{}"  # piped input: nothing on stderr to parse around
    assert capsys.readouterr().err == ""
