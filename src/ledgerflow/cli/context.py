"""What every command shares: global options, the app, and output helpers."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from ledgerflow.app import App
from ledgerflow.builtin import load_app
from ledgerflow.config import load_settings
from ledgerflow.payload import dumps_strict


class _LazyConsole:
    """A Rich console built on first use: `ledgerflow worker` never prints one and skips importing Rich."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._console: Any = None

    def __getattr__(self, name: str) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._options)
        return getattr(self._console, name)


console = _LazyConsole(soft_wrap=True)
err_console = _LazyConsole(stderr=True, soft_wrap=True)


@dataclass
class State:
    database_url: str | None = None
    app_ref: str | None = None
    debug: bool = False
    _app: App | None = None

    def app(self, app_ref: str | None = None) -> App:
        """The app commands act on: `--app`/`LEDGERFLOW_APP`, else the built-in app."""
        if self._app is None:
            if self.database_url:
                os.environ["LEDGERFLOW_DATABASE_URL"] = self.database_url
            settings = load_settings()
            self._app = load_app(app_ref or self.app_ref or settings.app, settings)
        return self._app


state = State()


def _default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if hasattr(value, "__dict__"):
        return value.__dict__
    return str(value)


def print_json(value: Any) -> None:
    """One JSON document on stdout."""
    sys.stdout.write(dumps_strict(value, default=_default, ensure_ascii=False, indent=2) + "\n")


def print_table(columns: Sequence[str], rows: Iterable[Sequence[Any]], title: str | None = None) -> None:
    from rich.table import Table

    table = Table(*columns, title=title, show_lines=False)
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    console.print(table)


def fmt_time(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value else ""
