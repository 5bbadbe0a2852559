"""CLI: ``memento-lens app [RUN_DIR ...]`` launches the Streamlit exploration app on the named runs."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

DEMO_RUN = Path("runs/demo")


def streamlit_command(run_dirs: list[Path], host: str, port: int) -> tuple[list[str], dict[str, str]]:
    """The ``streamlit run`` argv and the environment that carries the run directories to the app."""
    from memento_lens.app.data import ENV_RUNS

    entry = Path(__file__).resolve().parent.parent / "app" / "main.py"
    if not entry.exists():  # installed (non-editable): the app package sits next to this module
        import memento_lens.app as app_pkg

        entry = Path(app_pkg.__file__).with_name("main.py")
    argv = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(entry),
        "--server.address",
        host,
        "--server.port",
        str(port),
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        "--global.developmentMode",
        "false",
        "--client.toolbarMode",
        "minimal",
    ]
    env = dict(os.environ)
    env[ENV_RUNS] = os.pathsep.join(str(p.resolve()) for p in run_dirs)
    return argv, env


def port_problem(host: str, port: int) -> str | None:
    """Why the app could not listen on ``host:port`` (e.g. another process holds it), or None when it can.

    Binds and releases a socket the way the server will (``SO_REUSEADDR``, so a port in TIME_WAIT is free), so a
    busy port is one clear line before anything starts, not a server log and a false "app on http://...".
    """
    import errno
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return f"--host {host}: cannot resolve it ({exc.strerror})"
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return (
                    f"--port {port}: port {port} on {host} is already in use (another memento-lens app or server?); "
                    f"stop it or pick a free port, e.g. --port {port + 1}"
                )
            if exc.errno in (errno.EACCES, errno.EPERM):
                return (
                    f"--port {port}: not allowed to listen on port {port} on {host} (ports below 1024 need privileges)"
                )
            if exc.errno == errno.EADDRNOTAVAIL:
                return f"--host {host}: not an address of this machine"
            return f"--port {port}: cannot listen on {host}:{port} ({exc.strerror})"
    return None


def app_cmd(
    run_dirs: Optional[List[Path]] = typer.Argument(
        None, help="Run directories (or folders of runs) to explore; default: the demo run at runs/demo."
    ),
    port: int = typer.Option(8501, "--port", help="Port to serve on (1-65535)."),
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Address to bind; the default keeps the app on this machine only."
    ),
) -> None:
    """Explore runs in the browser: traces and evictions, attention, erased-block residue, probes, figures.

    The app only reads the directories named here.
    """
    from memento_lens.runtime.errors import OptionError
    from memento_lens.runtime.validate import check_port

    try:
        check_port(port, "--port")
    except OptionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None
    dirs = list(run_dirs or [])
    if not dirs:
        if not (DEMO_RUN / "manifest.json").exists():
            print(
                f"error: no run directory given and the demo run {DEMO_RUN} does not exist (looked in "
                f"{Path.cwd()}). Create it with `memento-lens demo`, or pass a run: "
                "`memento-lens app RUN_DIR`.",
                file=sys.stderr,
            )
            raise typer.Exit(2)
        dirs = [DEMO_RUN]
    missing = [d for d in dirs if not d.is_dir()]
    if missing:
        print(f"error: {missing[0]}: no such run directory", file=sys.stderr)
        raise typer.Exit(2)
    problem = port_problem(host, port)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        raise typer.Exit(2)
    argv, env = streamlit_command(dirs, host, port)
    print(f"memento-lens app on http://{host}:{port}  (runs: {', '.join(str(d) for d in dirs)})", flush=True)
    os.execve(argv[0], argv, env)  # the server replaces this process: Ctrl-C / kill stops it directly


def register(app: typer.Typer) -> None:
    app.command("app")(app_cmd)
