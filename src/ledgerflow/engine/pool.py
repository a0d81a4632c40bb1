"""A pool of daemon threads for sync tasks, able to abandon a thread stuck past its timeout.

`concurrent.futures.ThreadPoolExecutor` joins its threads at interpreter exit, so one
stuck task would hang shutdown forever; here a timed-out thread is retired (it exits
when its task finally returns), a replacement is started, and exit never waits for it.

A worker's sync tasks are handed over as `_Call`s (`DaemonThreadPool.call`): their end is
reported to a callback in the pool's thread, without a `Future` (whose condition, locks and
callback list cost about 5 us a job, half of it in the worker's event loop); `submit` keeps
the `Future` for callers that await it (a task's child process).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

_PENDING, _RUNNING, _DONE, _CANCELLED = range(4)
#: Guards a `_Call`'s move out of pending (started by a thread, or cancelled by the worker).
_STATE = threading.Lock()
_log = logging.getLogger(__name__)


class _Call:
    """One call handed to the pool: pending, then running, then done (or cancelled unstarted).

    Its `value` or `error` is set before `done()` turns true; `on_done(key)` is called in the
    pool's thread once it is done (never for a call cancelled before it started)."""

    __slots__ = ("args", "error", "fn", "key", "on_done", "state", "thread", "value")

    def __init__(
        self, fn: Callable[..., Any], args: tuple[Any, ...], on_done: Callable[[Any], None] | None, key: Any
    ) -> None:
        self.fn = fn
        self.args = args
        self.on_done = on_done
        self.key = key
        self.state = _PENDING
        self.value: Any = None
        self.error: BaseException | None = None
        self.thread: threading.Thread | None = None

    def done(self) -> bool:
        """Whether it ran to its end (or was cancelled before starting)."""
        return self.state >= _DONE

    def cancel(self) -> bool:
        """Cancel it if no thread started it yet; False once it runs (or ran)."""
        with _STATE:
            if self.state == _PENDING:
                self.state = _CANCELLED
            return self.state == _CANCELLED

    def _start(self, thread: threading.Thread) -> bool:
        with _STATE:
            if self.state != _PENDING:
                return False
            self.state = _RUNNING
            self.thread = thread
            return True

    def _run(self) -> None:
        try:
            self.value = self.fn(*self.args)
        except BaseException as exc:  # SystemExit in a task's thread is the task's failure
            self.error = exc
        self.state = _DONE
        if self.on_done is not None:
            try:
                self.on_done(self.key)
            except Exception:  # as a Future's callbacks: logged, the thread goes on
                _log.exception("callback of a pool call raised")


class _Item(_Call):
    """A call whose end is a `Future` (for callers that await it)."""

    __slots__ = ("future",)

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        super().__init__(fn, args, None, None)
        self.future: Future[Any] = Future()

    def done(self) -> bool:
        return self.future.done()

    def cancel(self) -> bool:
        return self.future.cancel()

    def _start(self, thread: threading.Thread) -> bool:
        if not self.future.set_running_or_notify_cancel():
            return False
        self.thread = thread
        return True

    def _run(self) -> None:
        try:
            self.future.set_result(self.fn(*self.args))
        except BaseException as exc:
            self.future.set_exception(exc)


class DaemonThreadPool:
    def __init__(self, size: int, name: str = "ledgerflow-task") -> None:
        self._queue: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._name = name
        self._retired: set[threading.Thread] = set()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._count = 0
        for _ in range(size):
            self._spawn()

    def _spawn(self) -> None:
        self._count += 1
        thread = threading.Thread(target=self._loop, name=f"{self._name}-{self._count}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _loop(self) -> None:
        me = threading.current_thread()
        while True:
            item = self._queue.get()
            if item is None:
                return
            if not item._start(me):
                continue
            item._run()
            with self._lock:
                if me in self._retired:
                    self._retired.discard(me)
                    return

    def submit(self, fn: Callable[..., Any], *args: Any) -> tuple[Future[Any], _Item]:
        item = _Item(fn, args)
        self._queue.put(item)
        return item.future, item

    def call(
        self, fn: Callable[..., Any], args: tuple[Any, ...], on_done: Callable[[Any], None], key: Any
    ) -> _Call:
        """Run `fn(*args)` in a pool thread; that thread then calls `on_done(key)`."""
        item = _Call(fn, args, on_done, key)
        self._queue.put(item)
        return item

    def abandon(self, item: _Call) -> None:
        """Retire the thread running `item` and start a replacement."""
        with self._lock:
            if item.thread is not None and not item.done():
                self._retired.add(item.thread)
                self._spawn()

    def shutdown(self) -> None:
        for _ in self._threads:
            self._queue.put(None)
