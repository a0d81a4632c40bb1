"""A test app for the auto-stop rules, run by real worker processes (`--app tests.apps.autostop:app`)."""

from __future__ import annotations

from ledgerflow import App

app = App()


@app.task(name="flaky_import", max_attempts=1)
def flaky_import(fail: bool) -> None:
    """Fails when told to: the test decides the failure rate."""
    if fail:
        raise ValueError("unreadable import file")


@app.task(name="noop")
def noop() -> None:
    """Does nothing: a job that any claiming worker would finish at once."""
