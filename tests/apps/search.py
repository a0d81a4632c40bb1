"""A test app for the search races (`--app tests.apps.search:app`): jobs that succeed or fail
with their label in the error, so failures and retries change what an error search finds."""

from __future__ import annotations

from ledgerflow import App

app = App()


@app.task(name="echo")
def echo(label: str) -> str:
    """Succeed."""
    return label


@app.task(name="refuse", max_attempts=2, retry_backoff=0.05)
def refuse(label: str) -> None:
    """Fail twice (an error with the label each time), then die."""
    raise ValueError(f"refused {label}")
