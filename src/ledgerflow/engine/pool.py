"""A pool of daemon threads for sync tasks, able to abandon a thread stuck past its timeout.

`concurrent.futures.ThreadPoolExecutor` joins its threads at interpreter exit, so one
stuck task would hang shutdown forever; here a timed-out thread is retired (it exits
when its task finally returns), a replacement is started, and exit never waits for it.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any


class _Item:
    __slots__ = ("args", "fn", "future", "thread")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.fn = fn
        self.args = args
        self.future: Future[Any] = Future()
        self.thread: threading.Thread | None = None


class DaemonThreadPool:
    def __init__(self, size: int, name: str = "ledgerflow-task") -> None:
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
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
            if not item.future.set_running_or_notify_cancel():
                continue
            item.thread = me
            try:
                item.future.set_result(item.fn(*item.args))
            except BaseException as exc:
                item.future.set_exception(exc)
            with self._lock:
                if me in self._retired:
                    self._retired.discard(me)
                    return

    def submit(self, fn: Callable[..., Any], *args: Any) -> tuple[Future[Any], _Item]:
        item = _Item(fn, args)
        self._queue.put(item)
        return item.future, item

    def abandon(self, item: _Item) -> None:
        """Retire the thread running `item` and start a replacement."""
        with self._lock:
            if item.thread is not None and not item.future.done():
                self._retired.add(item.thread)
                self._spawn()

    def shutdown(self) -> None:
        for _ in self._threads:
            self._queue.put(None)
