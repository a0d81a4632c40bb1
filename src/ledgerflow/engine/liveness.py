"""Is the worker holding a lease still alive? Answerable only for workers on this host.

A lease that expired while its worker's process still runs usually means the worker
could not write its heartbeat (SQLite's write lock is not fair under contention). On the
same host we can ask the kernel: a missing, zombie or stopped (SIGSTOP) process is dead
for our purposes; a running one is left alone, up to a safety limit.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

HOSTNAME = socket.gethostname()


def owner_of(worker_id: str | None) -> tuple[str, int] | None:
    """(hostname, pid) from a worker id `host:pid:nonce`."""
    parts = (worker_id or "").rsplit(":", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1])


def process_running(pid: int) -> bool:
    """True if `pid` exists and is neither stopped nor a zombie."""
    stat = Path(f"/proc/{pid}/stat")
    try:
        state = stat.read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    except OSError:  # no /proc (not Linux): fall back to existence
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return state not in ("T", "t", "Z", "X")


def local_owner_running(worker_id: str | None) -> bool:
    """True only when the lease holder runs on this host and its process is running."""
    owner = owner_of(worker_id)
    return owner is not None and owner[0] == HOSTNAME and process_running(owner[1])
