"""`memento-lens app`: a busy port is one clear line naming it (nothing launched, no "app on http://..." claim);
a free one launches streamlit on it."""

from __future__ import annotations

import socket

import pytest
from memento_lens.app.fixtures import FixtureSpec, write_fixture_run
from typer.testing import CliRunner

from memento_lens.cli import app


@pytest.fixture
def run(tmp_path):
    return write_fixture_run(
        tmp_path / "run", FixtureSpec(n_traces=1, attention_traces=0, probes=False, ablations=False, figures=False)
    )


@pytest.fixture
def launched(monkeypatch):
    calls = []

    def fake_execve(path, argv, env):  # the real one would replace the test process with streamlit
        calls.append(argv)
        raise SystemExit(0)

    monkeypatch.setattr("os.execve", fake_execve)
    return calls


def test_busy_port_is_one_clear_line(run, launched):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = CliRunner().invoke(app, ["app", str(run), "--port", str(port)])
    assert res.exit_code == 2 and not launched
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert lines == [lines[0]] and f"--port {port}: port {port} on 127.0.0.1 is already in use" in lines[0]
    assert "http://" not in res.output


def test_free_port_launches_streamlit_on_it(run, launched):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    res = CliRunner().invoke(app, ["app", str(run), "--port", str(port)])
    assert launched and "--server.port" in launched[0] and str(port) in launched[0]
    assert f"app on http://127.0.0.1:{port}" in res.output
