"""`isolation="process"`: run a task in a child process that is killed on timeout.

The child dies with its worker: on Linux it asks the kernel for SIGKILL when its parent
dies (`PR_SET_PDEATHSIG`), so a SIGKILLed worker leaves no child finishing a side effect
while its job is rescued and run elsewhere.
"""

from __future__ import annotations

import ctypes
import importlib
import multiprocessing
import os
import signal
import sys
import traceback
from multiprocessing.connection import Connection
from typing import Any

from ledgerflow.errors import JobTimeout

_context = multiprocessing.get_context("spawn")


class ChildTaskError(Exception):
    """A task failed in its child process; carries the child's error type and traceback."""

    def __init__(self, type_name: str, message: str, tb: str) -> None:
        super().__init__(message)
        self.type_name = type_name
        self.child_traceback = tb


def _resolve(module: str, qualname: str) -> Any:
    target: Any = importlib.import_module(module)
    for part in qualname.split("."):
        target = getattr(target, part)
    return getattr(target, "func", target)  # a decorated Task keeps the function in .func


#: prctl(2) option: the signal this process receives when its parent dies.
PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this process when its parent dies (Linux), and exit at once if
    the parent already died before we asked."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent_pid:
        os._exit(1)


def _child(
    module: str, qualname: str, args: list[Any], kwargs: dict[str, Any], out: Connection, parent_pid: int
) -> None:
    die_with_parent(parent_pid)
    try:
        func = _resolve(module, qualname)
        result = func(*args, **kwargs)
        if hasattr(result, "__await__"):
            import asyncio

            result = asyncio.run(result)  # type: ignore[arg-type]
        out.send(("ok", result))
    except BaseException as exc:
        out.send(("error", type(exc).__name__, str(exc), traceback.format_exc()))
    finally:
        out.close()


class ChildProcess:
    """One isolated attempt; `run` blocks until it ends, `kill` ends it early."""

    def __init__(self, module: str, qualname: str, args: list[Any], kwargs: dict[str, Any]) -> None:
        self._recv, send = _context.Pipe(duplex=False)
        self.process = _context.Process(
            target=_child, args=(module, qualname, args, kwargs, send, os.getpid()), daemon=True
        )
        self._send = send

    def run(self, timeout: float) -> Any:
        self.process.start()
        self._send.close()
        try:
            if not self._recv.poll(timeout):
                raise JobTimeout(f"task ran past its timeout of {timeout:g}s; child process killed")
            message = self._recv.recv()
        except EOFError:
            self.process.join(1)
            raise ChildTaskError(
                "ChildProcessDied", f"child process exited with code {self.process.exitcode}", ""
            ) from None
        finally:
            self.kill()
        if message[0] == "ok":
            return message[1]
        raise ChildTaskError(message[1], message[2], message[3])

    def kill(self) -> None:
        if self.process.pid is None:
            return
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5)
