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


def test_unknown_tokenizer_name_is_refused_without_a_hub(tmp_path, monkeypatch):
    """`--tokenizer qwen4` names the choices; nothing tries huggingface.co (offline by construction)."""
    from memento_lens.runtime.errors import ConfigError
    from memento_lens.runtime.traces.tokenizer import load_tokenizer

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"--tokenizer 'qwen4': not a tokenizer preset \(qwen3\).*local tokenizer"):
        load_tokenizer("qwen4")


def test_token_counts_refuses_approx_against_itself(tmp_path):
    """The exact side of token-counts must be a real tokenizer: approx vs approx would report 0% error."""
    from typer.testing import CliRunner

    from memento_lens.cli import app

    f = tmp_path / "t.json"
    f.write_text('{"problem": "p", "segments": [{"type": "block", "text": "a"}, {"type": "summary", "text": "b"}]}')
    res = CliRunner().invoke(app, ["token-counts", str(f), "--tokenizer", "approx"])
    assert res.exit_code == 2 and "--tokenizer approx" in res.stderr and "--against" in res.stderr, res.output
