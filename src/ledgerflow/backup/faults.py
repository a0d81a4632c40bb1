"""Fault injection for the backup crash tests."""

from __future__ import annotations

import os
import signal


def crash_point(name: str) -> None:
    """`LEDGERFLOW_BACKUP_CRASH_AT=name` kills the process here (SIGKILL: no clean-up runs)."""
    if os.environ.get("LEDGERFLOW_BACKUP_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
