"""The ``xsilo`` command: one root, one sub-command group per package.

Each package owns its commands (``coordinator/cli.py``, ``silo_client/cli.py`` …); this
module only assembles them and turns :class:`~xsilo.errors.XsiloError` into one red line
and a non-zero exit (``--debug`` shows the traceback).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from xsilo.errors import XsiloError
from xsilo.terms import printable

app = typer.Typer(
    name="xsilo",
    help="Cross-silo federated learning on Flower: train one model across institutions "
    "without any record leaving its owner.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
_err = Console(stderr=True)
_state = {"debug": False, "registered": False}


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks and debug logs."),
) -> None:
    """Cross-silo federated learning on Flower."""
    _state["debug"] = debug
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


def report(
    run_dir: Path = typer.Argument(..., help="A run directory (coordinator home's runs/<name>)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Where to write the HTML report "
                                       "(default: RUN_DIR/report.html)."),
) -> None:
    """Write a run's report: one self-contained HTML file (plots inline, no network)."""
    from coordinator.report import write_report

    path = write_report(run_dir, out)
    Console().print(f"report: {path.resolve()}")


def register() -> None:
    """Add the command groups (imported only now: ``xsilo --help`` stays fast). Once."""
    if _state.get("registered"):
        return
    _state["registered"] = True
    from coordinator.cli import app as coordinator_app
    from deploy.pki.cli import pki_app
    from silo_client.cli import app as silo_app
    from strategies.cli import app as strategies_app
    from federation.demo import demo
    from federation.version import version_cmd

    app.command("demo")(demo)
    app.command("version")(version_cmd)
    app.command("report")(report)
    app.add_typer(coordinator_app, name="coordinator")
    app.add_typer(silo_app, name="silo")
    app.add_typer(pki_app, name="pki")
    app.add_typer(strategies_app, name="strategies")


def main() -> None:
    """Console-script entry point."""
    # Institutions must not phone home: no telemetry, no update check, in every child too.
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    register()
    try:
        code = app(standalone_mode=False)
        if isinstance(code, int) and code:  # click turns Ctrl-C / Abort into a return value
            if code == 130:
                _err.print("[yellow]interrupted[/]")
            sys.exit(code)
    except XsiloError as exc:
        if _state["debug"]:
            raise
        from rich.text import Text

        # the message may quote a silo's words: no escape sequence reaches the terminal
        _err.print(Text("error: ", style="bold red") + Text(printable(str(exc), 20_000,
                                                                      lines=True)),
                   highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        _err.print("[yellow]interrupted[/]")
        sys.exit(130)
    except Exception as exc:  # click usage errors and aborts
        import click

        if isinstance(exc, click.exceptions.Exit):
            sys.exit(exc.exit_code)
        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            sys.exit(1)
        raise


if __name__ == "__main__":
    main()
