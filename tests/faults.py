"""Fault injection at every database statement: the harness behind the exactly-once proofs.

A clean run is first *counted*: every statement an engine sends (each cursor execute, and
each COMMIT as a statement of its own) gets a number. A test then replays the run once per
number `k` with one fault:

* `error_before` — a transient database error instead of statement `k` (nothing of it ran);
* `error_after` — statement `k` runs, then the caller sees a transient error; when `k` is a
  COMMIT this is the ambiguous case: the transaction *is* committed but the caller believes
  it failed;
* `kill` — the process SIGKILLs itself just before statement `k` (use it in a subprocess:
  `python -m tests.faultrun …` with `LEDGERFLOW_TEST_FAULT=kill:K`);
* `stop` — the process SIGSTOPs itself just before statement `k` (a frozen process: every
  thread stops, leases expire); after SIGCONT it sends statement `k` and carries on.

Usage in-process::

    faults = StatementFaults()              # counting only
    faults.install(app.db.engine)
    ... clean run ...
    n = faults.count
    for k in range(1, n + 1):
        faults = StatementFaults("error_after", k, only=StatementFaults.commits)
        ...

Statements issued on raw driver connections (PostgreSQL COPY, LISTEN) are not counted.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import event, exc
from sqlalchemy.engine import Engine

Mode = Literal["count", "error_before", "error_after", "kill", "stop"]


class InjectedFault(Exception):
    """The driver-level error behind an injected fault (reads like a dropped connection)."""


def injected_error(statement: str) -> exc.OperationalError:
    """A transient error as SQLAlchemy raises it for a lost connection (`is_transient` is true)."""
    orig = InjectedFault("server closed the connection unexpectedly (injected fault)")
    return exc.OperationalError(statement, None, orig)


@dataclass
class Statement:
    number: int
    kind: Literal["execute", "commit"]
    sql: str
    thread: str
    autocommit: bool = False  # an execute that commits alone (no transaction around it)

    def __str__(self) -> str:
        head = " ".join(self.sql.split())[:90]
        return f"#{self.number} [{self.thread}] {head}"


@dataclass
class StatementFaults:
    """Counts statements on the engines it is installed on, and injects one fault at number `at`.

    `only` filters which statements are counted (e.g. `StatementFaults.commits`, or one thread's);
    the others run untouched and unnumbered.
    """

    mode: Mode = "count"
    at: int | None = None
    only: Callable[[Statement], bool] | None = None
    log: list[Statement] = field(default_factory=list)
    fired: Statement | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _undo: list[Callable[[], None]] = field(default_factory=list, repr=False)

    @staticmethod
    def commits(statement: Statement) -> bool:
        return statement.kind == "commit"

    @staticmethod
    def in_thread(prefixes: str) -> Callable[[Statement], bool]:
        """Statements of threads whose name starts with one of the comma-separated `prefixes`."""
        names = tuple(prefixes.split(","))
        return lambda statement: statement.thread.startswith(names)

    @staticmethod
    def commits_of(fragment: str, thread_prefix: str = "") -> Callable[[Statement], bool]:
        """Only the COMMITs (on threads named `thread_prefix`…) of transactions that sent a
        statement containing `fragment` — e.g. the first commit of a worker's claim, whatever
        else its threads did before. A statement containing it that runs in autocommit is its
        own commit (a PostgreSQL worker cycle that only claims)."""
        pending: set[str] = set()

        def only(statement: Statement) -> bool:
            if not statement.thread.startswith(thread_prefix):
                return False
            if statement.kind == "execute":
                if fragment in statement.sql and statement.autocommit:
                    return True
                if fragment in statement.sql:
                    pending.add(statement.thread)
                return False
            if statement.thread in pending:
                pending.discard(statement.thread)
                return True
            return False

        return only

    @staticmethod
    def starting(prefix: str, thread_prefix: str = "") -> Callable[[Statement], bool]:
        """Only the statements (on threads named `thread_prefix`…) whose SQL starts with
        `prefix`: e.g. a worker cycle's `BEGIN IMMEDIATE` on SQLite."""
        return lambda s: (
            s.kind == "execute" and s.thread.startswith(thread_prefix) and s.sql.startswith(prefix)
        )

    @property
    def count(self) -> int:
        return len(self.log)

    # ------------------------------------------------------------------ installing
    def install(self, engine: Engine) -> StatementFaults:
        """Watch `engine` (its statements and its dialect's commits) until `uninstall()`."""
        event.listen(engine, "before_cursor_execute", self._before_execute)
        event.listen(engine, "after_cursor_execute", self._after_execute)
        dialect = engine.dialect
        original = dialect.do_commit

        def do_commit(dbapi_connection: Any) -> None:
            numbered = self._number("commit", "COMMIT")
            self._maybe_fail_before(numbered, "COMMIT")
            original(dbapi_connection)
            self._maybe_fail_after(numbered, "COMMIT")

        dialect.do_commit = do_commit  # type: ignore[method-assign]

        def undo() -> None:
            event.remove(engine, "before_cursor_execute", self._before_execute)
            event.remove(engine, "after_cursor_execute", self._after_execute)
            dialect.do_commit = original  # type: ignore[method-assign]

        self._undo.append(undo)
        return self

    def uninstall(self) -> None:
        while self._undo:
            self._undo.pop()()

    # ------------------------------------------------------------------ hooks
    def _number(
        self, kind: Literal["execute", "commit"], sql: str, autocommit: bool = False
    ) -> Statement | None:
        candidate = Statement(0, kind, sql, threading.current_thread().name, autocommit)
        if self.only is not None and not self.only(candidate):
            return None
        with self._lock:
            candidate.number = len(self.log) + 1
            self.log.append(candidate)
        return candidate

    def _maybe_fail_before(self, statement: Statement | None, sql: str) -> None:
        if statement is None or statement.number != self.at or self.fired is not None:
            return
        if self.mode == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if self.mode == "stop":
            self.fired = statement
            # to this thread: it stops the whole process before the statement. Sent to the
            # process, the signal was taken by the main thread, and this one ran on meanwhile.
            signal.pthread_kill(threading.get_ident(), signal.SIGSTOP)
        if self.mode == "error_before":
            self.fired = statement
            raise injected_error(sql)

    def _maybe_fail_after(self, statement: Statement | None, sql: str) -> None:
        if statement is None or statement.number != self.at or self.fired is not None:
            return
        if self.mode == "error_after":
            self.fired = statement
            raise injected_error(sql)

    def _before_execute(self, conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        autocommit = conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT"
        numbered = self._number("execute", statement, autocommit)
        conn.info["ledgerflow_fault_statement"] = numbered
        self._maybe_fail_before(numbered, statement)

    def _after_execute(self, conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        self._maybe_fail_after(conn.info.pop("ledgerflow_fault_statement", None), statement)


def process_state(pid: int) -> str:
    """The state letter of a Linux process: `T` once a `stop` fault has frozen it."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0]


def from_environment() -> StatementFaults | None:
    """The plan in `LEDGERFLOW_TEST_FAULT` (`MODE:K[:THREAD_PREFIX[:SQL_FRAGMENT]]`), or None.

    With a SQL fragment only the commits of transactions that sent it are numbered
    (`StatementFaults.commits_of`); with `^SQL` only the statements starting with `SQL`
    (`StatementFaults.starting`)."""
    spec = os.environ.get("LEDGERFLOW_TEST_FAULT")
    if not spec:
        return None
    mode, at, *rest = spec.split(":", 3)
    only = None
    if len(rest) == 2 and rest[1].startswith("^"):
        only = StatementFaults.starting(rest[1][1:], rest[0])
    elif len(rest) == 2:
        only = StatementFaults.commits_of(rest[1], rest[0])
    elif rest and rest[0]:
        only = StatementFaults.in_thread(rest[0])
    return StatementFaults(mode, int(at), only)  # type: ignore[arg-type]


def install_on_every_database(faults: StatementFaults) -> None:
    """Install `faults` on the engine of every `Database` created from now on (subprocesses)."""
    from ledgerflow.db.database import Database

    original = Database.__init__

    def init(self: Database, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        faults.install(self.engine)

    Database.__init__ = init  # type: ignore[method-assign]
