"""The built-in app: ledgerflow's own tasks, used when no `--app` / `LEDGERFLOW_APP` is given."""

from __future__ import annotations

import importlib
from typing import Any

from ledgerflow.app import App
from ledgerflow.config import Settings
from ledgerflow.errors import BadInput


def register_builtin_tasks(app: App) -> None:
    """Add ledgerflow's own tasks (cleanup, export, ...) to `app`."""

    @app.task(name="ledgerflow.cleanup", queue="maintenance", max_attempts=3, timeout=600)
    def cleanup(days: int | None = None) -> dict[str, int]:
        """Daily cleanup: prune every kind of record after its retention (`days`: jobs' retention)."""
        from ledgerflow.cleanup import Retention, prune

        return prune(app, Retention.from_settings(app.settings, days))

    @app.task(name="ledgerflow.backup", queue="maintenance", max_attempts=3, timeout=3600)
    def backup() -> dict[str, Any]:
        """Weekly backup: snapshot, verify by restoring into a scratch database, keep the newest N."""
        from ledgerflow.backup import create_backup, describe

        return describe(create_backup(app))


def build_app(settings: Settings | None = None) -> App:
    from ledgerflow.demo import register_demo_tasks
    from ledgerflow.export.tasks import register_export_tasks
    from ledgerflow.receipts.tasks import register_receipt_tasks

    app = App(settings=settings)
    register_builtin_tasks(app)
    register_export_tasks(app)
    register_receipt_tasks(app)
    register_demo_tasks(app)
    return app


def load_app(reference: str | None, settings: Settings | None = None) -> App:
    """Import `package.module:attribute` (an App, or a callable returning one), or build the built-in app."""
    if not reference:
        return build_app(settings)
    module_name, _, attribute = reference.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BadInput(f"--app {reference!r}: cannot import {module_name!r} ({exc})") from None
    target: Any = getattr(module, attribute or "app", None)
    if callable(target) and not isinstance(target, App):
        target = target()
    if not isinstance(target, App):
        raise BadInput(f"--app {reference!r}: {attribute or 'app'!r} is not a ledgerflow App")
    return target
