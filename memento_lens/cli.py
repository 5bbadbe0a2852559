"""The one memento-lens CLI. Each area registers its commands from its own ``cli_*`` module;
heavy imports (torch, transformers, streamlit) happen inside commands, so ``--help`` is instant."""

from __future__ import annotations

import typer

from .cli_options import BLOCK_NUMBERING

app = typer.Typer(
    rich_markup_mode=None,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="memento-lens: observe, probe and plot erased-block KV traces. " + BLOCK_NUMBERING,
)


@app.callback()
def _root() -> None:
    pass


def _register() -> None:
    from . import cli_runtime

    cli_runtime.register(app)
    for name in ("cli_toy", "cli_probes", "cli_analyses", "cli_app", "cli_demo", "cli_real"):
        try:
            module = __import__(f"memento_lens.{name}", fromlist=["register"])
        except ModuleNotFoundError as exc:
            if exc.name != f"memento_lens.{name}":
                raise
            continue
        module.register(app)


_register()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
