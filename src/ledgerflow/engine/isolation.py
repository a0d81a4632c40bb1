"""`isolation="process"`: run a task in a child process that is killed on timeout.

The child dies with its worker: on Linux it asks the kernel for SIGKILL when its parent
dies (`PR_SET_PDEATHSIG`), so a SIGKILLed worker leaves no child finishing a side effect
while its job is rescued and run elsewhere.

Inside the child `current_job()` works as in the worker: progress and metadata travel up the
result pipe (`("progress", values)` messages before the result) and the worker writes them,
fenced and throttled like its own. The attempt's trace context is passed down, so the spans
the task opens in the child belong to the attempt's trace; the child flushes its tracer
provider before it answers (it is killed right after).
"""

from __future__ import annotations

import ctypes
import importlib
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import replace
from multiprocessing.connection import Connection
from typing import Any

from ledgerflow import tracing
from ledgerflow.engine.jobs import JobContext, set_current_job
from ledgerflow.engine.progress import ProgressReport
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
    module: str,
    qualname: str,
    args: list[Any],
    kwargs: dict[str, Any],
    out: Connection,
    parent_pid: int,
    job: JobContext | None = None,
    trace_carrier: dict[str, str] | None = None,
) -> None:
    die_with_parent(parent_pid)
    lock = threading.Lock()

    def send(message: tuple[Any, ...]) -> None:
        with lock:  # the task's own threads may report progress
            out.send(message)

    try:
        if job is not None:
            report = ProgressReport(job.job_id, job.attempt, 0, listener=lambda v: send(("progress", v)))
            set_current_job(replace(job, report=report))
        func = _resolve(module, qualname)
        with tracing.attached(trace_carrier):
            result = func(*args, **kwargs)
            if hasattr(result, "__await__"):
                import asyncio

                result = asyncio.run(result)  # type: ignore[arg-type]
        tracing.flush()
        send(("ok", result))
    except BaseException as exc:
        tracing.flush()
        send(("error", type(exc).__name__, str(exc), traceback.format_exc()))
    finally:
        out.close()


class ChildProcess:
    """One isolated attempt; `run` blocks until it ends, `kill` ends it early."""

    def __init__(
        self,
        module: str,
        qualname: str,
        args: list[Any],
        kwargs: dict[str, Any],
        job: JobContext | None = None,
        trace_carrier: dict[str, str] | None = None,
    ) -> None:
        """`job` (its report stays here) makes `current_job()` work in the child; its reports
        reach `job.report`. `trace_carrier` is the attempt's W3C trace context."""
        self._recv, send = _context.Pipe(duplex=False)
        self._report = job.report if job is not None else None
        shipped = replace(job, report=None) if job is not None else None
        self.process = _context.Process(
            target=_child,
            args=(module, qualname, args, kwargs, send, os.getpid(), shipped, trace_carrier),
            daemon=True,
        )
        self._send = send

    def run(self, timeout: float) -> Any:
        self.process.start()
        self._send.close()
        deadline = time.monotonic() + timeout
        try:
            while True:
                if not self._recv.poll(max(0.0, deadline - time.monotonic())):
                    raise JobTimeout(f"task ran past its timeout of {timeout:g}s; child process killed")
                message = self._recv.recv()
                if message[0] != "progress":
                    break
                if self._report is not None:
                    self._report.replace(message[1])
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
