"""Structured logging: JSON lines when not on a terminal, readable text on one."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

import structlog

_configured = False


def configure_logging(level: str = "INFO", json: bool | None = None) -> None:
    """Configure structlog once per process (idempotent)."""
    global _configured
    if json is None:
        json = not sys.stderr.isatty()
    renderer: Any = (
        structlog.processors.JSONRenderer(ensure_ascii=False)
        if json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    _configured = True


def get_logger(name: str) -> Any:
    """Return a structlog logger bound to a component name."""
    if not _configured:
        configure_logging()
    return structlog.get_logger(component=name)


def best_effort(log: Any, event: str, action: Callable[[], object]) -> None:
    """Run `action`; a failure is logged as `event`, never raised.

    For work after a decision was committed (resolving an alert, removing temp files): an
    error there must not be mistaken for a failure of what was already decided.
    """
    try:
        action()
    except Exception as exc:
        lines = str(exc).strip().splitlines()
        log.warning(event, error=lines[0] if lines else type(exc).__name__)
