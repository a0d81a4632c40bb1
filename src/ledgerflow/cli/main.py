"""`ledgerflow` entry point: global options, sub-command groups, and SPEC §9 error handling.

Exit codes: 0 success, 1 the operation failed, 2 bad input or configuration. Errors are
one line on stderr; `--debug` adds the traceback. Before exiting, the alerts the command
raised are delivered (`App.close`).
"""

from __future__ import annotations

import sys
import traceback
from typing import Annotated

import typer

from ledgerflow.cli import backup, jobs, ledger, receipts, schedules, system
from ledgerflow.cli.context import err_console, state
from ledgerflow.errors import LedgerflowError

cli = typer.Typer(
    name="ledgerflow",
    help="Durable jobs, exact cron and exactly-once journal exports, on SQLite or PostgreSQL.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@cli.callback()
def main(
    database_url: Annotated[
        str | None, typer.Option("--database-url", help="Overrides LEDGERFLOW_DATABASE_URL.")
    ] = None,
    app: Annotated[
        str | None, typer.Option("--app", help="package.module:app (default: LEDGERFLOW_APP, else built-in).")
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
) -> None:
    state.database_url = database_url
    state.app_ref = app
    state.debug = debug


system.register(cli)
jobs.register(cli)
schedules.register(cli)
ledger.register(cli)
backup.register(cli)
receipts.register(cli)


def run(argv: list[str] | None = None) -> None:
    """Console-script entry point.

    Usage errors (unknown option or command, a value out of range) are handled by the command
    line parser itself: its message, exit 2.
    """
    command = typer.main.get_command(cli)
    try:
        command.main(args=argv, prog_name="ledgerflow", standalone_mode=True)
    except LedgerflowError as exc:
        _fail(str(exc), exc.exit_code)
    except Exception as exc:  # a bug: still one line unless --debug
        _fail(f"unexpected {type(exc).__name__}: {exc}", 1)
    finally:
        if state._app is not None:
            state._app.close()  # alerts raised by this command are delivered before it exits


def _fail(message: str, code: int) -> None:
    if state.debug:
        traceback.print_exc()
    err_console.print(f"error: {message}", markup=False, highlight=False)
    sys.exit(code)
