"""Real processes without the start-up: a server that imports ledgerflow once, then forks.

The fault sweeps start hundreds of short `ledgerflow` processes; each would spend most of its
CPU importing SQLAlchemy, pydantic and ledgerflow (about 1.3 s). `ForkServer` starts one
`python -m tests.forkserver` per test process, which imports them and waits; `spawn` asks it to
fork a child that sets its environment, working directory and `sys.argv`, redirects its output
to files and runs a module as `__main__` — as `python -m MODULE ARGS` would, in a fresh process
that the test can signal, freeze (SIGSTOP) and kill like any other. The server reaps its
children and reports each exit code (negative: the signal that ended it, as with `Popen`).
Nothing of the test's own configuration is imported before the fork: the app a worker runs is
imported by the child, from its own environment. Coverage follows the children (`patch = fork`).
"""

from __future__ import annotations

import atexit
import importlib
import json
import os
import random
import runpy
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

#: What the server imports before it forks (the heavy part of `python -m ledgerflow …`).
PRELOAD = [
    "ledgerflow.cli.main",
    "ledgerflow.app",
    "ledgerflow.engine.worker",
    "ledgerflow.export.saga",
    "ledgerflow.export.verify",
    "ledgerflow.db.sqlite",
    "ledgerflow.receipts.rules",
    "psutil",
    "sqlalchemy.dialects.sqlite.pysqlite",
    "sqlalchemy.dialects.postgresql.psycopg",
    "psycopg",
    "tests.faults",
    "tests.runs",
]


class ForkedProcess:
    """A child of the fork server, with the parts of `subprocess.Popen` the tests use."""

    def __init__(self, server: ForkServer, pid: int, stdout: Path, stderr: Path | None) -> None:
        self._server, self.pid, self._stdout, self._stderr = server, pid, stdout, stderr
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self._server.exit_code(self.pid, timeout=0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            code = self._server.exit_code(self.pid, timeout)
            if code is None:
                raise subprocess.TimeoutExpired(f"forked process {self.pid}", timeout or 0)
            self.returncode = code
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        """Wait for the exit, then (stdout, stderr) as text."""
        self.wait(timeout)
        err = self._stderr.read_text() if self._stderr is not None else ""
        return self._stdout.read_text(), err


class ForkServer:
    """The client side: one server process, children spawned on request."""

    def __init__(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tests.forkserver"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            cwd=ROOT,
        )
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._requests, self._replies = self._proc.stdin, self._proc.stdout
        ready = self._replies.readline().decode()
        if ready.strip() != "ready":
            raise RuntimeError(f"the fork server did not start (it said {ready!r})")
        self._lock = threading.Lock()  # one spawn request at a time
        self._changed = threading.Condition()
        self._pids: list[int] = []
        self._exits: dict[int, int] = {}
        threading.Thread(target=self._read, name="forkserver-replies", daemon=True).start()

    def _read(self) -> None:
        for raw in self._replies:
            kind, *numbers = raw.decode().split()
            with self._changed:
                if kind == "pid":
                    self._pids.append(int(numbers[0]))
                elif kind == "exit":
                    self._exits[int(numbers[0])] = int(numbers[1])
                self._changed.notify_all()

    def spawn(
        self, module: str, args: list[str], *, env: dict[str, str], stdout: Path, stderr: Path | None = None
    ) -> ForkedProcess:
        """`python -m MODULE ARGS` in a forked child, output to `stdout` (and `stderr`, else merged)."""
        for path in {stdout, stderr} - {None}:
            path.write_bytes(b"")  # there (and empty) when spawn returns, as with Popen
        request = {"module": module, "args": args, "env": env, "cwd": str(ROOT)}
        request |= {"stdout": str(stdout), "stderr": str(stderr) if stderr else None}
        with self._lock, self._changed:
            self._pids.clear()
            self._requests.write(json.dumps(request).encode() + b"\n")
            self._requests.flush()
            if not self._changed.wait_for(lambda: self._pids or self._proc.poll() is not None, 60):
                raise RuntimeError("the fork server did not answer")
            if not self._pids:
                raise RuntimeError(f"the fork server exited ({self._proc.returncode})")
            pid = self._pids.pop()
        return ForkedProcess(self, pid, stdout, stderr)

    def exit_code(self, pid: int, timeout: float | None) -> int | None:
        with self._changed:
            self._changed.wait_for(lambda: pid in self._exits, timeout)
            return self._exits.get(pid)

    def close(self) -> None:
        if self._proc.poll() is None:
            self._requests.close()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()


_shared: ForkServer | None = None


def shared() -> ForkServer:
    """This test process's fork server (started on first use, stopped at exit)."""
    global _shared
    if _shared is None or _shared._proc.poll() is not None:
        _shared = ForkServer()
        atexit.register(_shared.close)
    return _shared


def run(
    module: str, args: list[str], *, env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess[str]:
    """`subprocess.run([python, "-m", MODULE, *ARGS], capture_output=True, text=True)` in a child
    forked from this test process's fork server; the child is killed if it outlives `timeout`."""
    with tempfile.TemporaryDirectory(prefix="forkserver-run-") as tmp:
        out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
        proc = shared().spawn(module, args, env=env, stdout=out, stderr=err)
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
        return subprocess.CompletedProcess(
            [sys.executable, "-m", module, *args], code, out.read_text(), err.read_text()
        )


def stop_shared() -> None:
    """Stop this test process's fork server (it saves its coverage data as it exits)."""
    global _shared
    if _shared is not None:
        _shared.close()
        _shared = None


# ---------------------------------------------------------------- the server
def _child(request: dict[str, Any]) -> int:
    """In the forked child: become `python -m MODULE ARGS` and run it; its exit code."""
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    flags = os.O_WRONLY | os.O_CREAT
    out = os.open(request["stdout"], flags, 0o644)
    err = os.open(request["stderr"], flags, 0o644) if request["stderr"] else out
    os.dup2(out, 1)
    os.dup2(err, 2)
    for fd in {null, out, err}:
        os.close(fd)
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path]
    sys.path[:0] = paths  # as a new interpreter would read them
    random.seed()  # not the server's sequence
    sys.argv = [request["module"], *request["args"]]
    sys.orig_argv = [sys.executable, "-m", *sys.argv]  # what re-executing itself (execv) runs
    try:
        runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
    except SystemExit as stop:
        if stop.code is None or isinstance(stop.code, int):
            return stop.code or 0
        print(stop.code, file=sys.stderr)
        return 1
    except BaseException:
        traceback.print_exc()
        return 1
    return 0


def _serve() -> int | None:
    """Fork a child per request line; report `pid N` and `exit N CODE`. Returns in a child
    (its exit code), or None when the client closes the requests."""
    for name in PRELOAD:
        importlib.import_module(name)
    assert threading.active_count() == 1, "the server forks: it must not run threads"
    os.write(1, b"ready\n")
    selector = selectors.DefaultSelector()
    selector.register(0, selectors.EVENT_READ)
    pending = b""
    children = 0
    while True:
        for _key, _events in selector.select(timeout=0.02):
            data = os.read(0, 1 << 16)
            if not data:
                return None
            pending += data
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                pid = os.fork()
                if pid == 0:
                    selector.close()
                    return _child(json.loads(line))
                children += 1
                os.write(1, f"pid {pid}\n".encode())
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            children -= 1
            os.write(1, f"exit {pid} {os.waitstatus_to_exitcode(status)}\n".encode())


if __name__ == "__main__":
    code = _serve()
    sys.exit(code)  # a child ends as a normal interpreter exit (atexit, coverage); the server too
