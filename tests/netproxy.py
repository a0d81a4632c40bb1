"""A loopback TCP proxy that a test can partition: ledgerflow on one side, PostgreSQL on the other.

* `drop()` is a pulled cable. A socket filter (classic BPF, `SO_ATTACH_FILTER`: no privilege
  needed) on each of the proxy's sockets discards every packet before TCP sees it, so nothing is
  acknowledged: the peers' kernels retransmit with backoff, and TCP keepalives and user timeouts
  fire exactly as on a real network. New connections get no answer (their SYNs are dropped too).
* `stall()` is a hung middlebox: the sockets stay open and the kernel still acknowledges, but
  nothing is forwarded, so only an application or server timeout can notice.
* `heal()` ends either. Bytes held back are then forwarded; after a drop, the peers' own
  retransmissions bring theirs (as late as their backoff says).
* `cut_after(pattern, mode)` forwards the client bytes that contain `pattern`, then partitions:
  the statement reaches the server, its answer never comes back — a process cut off in the middle
  of a transaction. Match statements sent as text (see tests/apps/partition.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import selectors
import socket
import struct
import threading
from dataclasses import dataclass, field
from typing import Literal

from sqlalchemy import make_url

Mode = Literal["open", "stall", "drop"]

SO_ATTACH_FILTER = 26  # <asm-generic/socket.h>
SO_DETACH_FILTER = 27


class _Instruction(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


_DROP_ALL = (_Instruction * 1)(_Instruction(0x06, 0, 0, 0))  # BPF_RET | BPF_K, accept 0 bytes
_DROP_PROGRAM = struct.pack("HL", len(_DROP_ALL), ctypes.addressof(_DROP_ALL))  # struct sock_fprog


@dataclass
class _Link:
    """One proxied connection: the client's socket, the server's, and bytes waiting for each."""

    client: socket.socket
    server: socket.socket
    to_server: bytearray = field(default_factory=bytearray)
    to_client: bytearray = field(default_factory=bytearray)
    tail: bytes = b""  # the end of the last client chunk, for patterns split across reads

    def peer(self, sock: socket.socket) -> tuple[socket.socket, bytearray]:
        return (self.server, self.to_server) if sock is self.client else (self.client, self.to_client)

    def pending(self, sock: socket.socket) -> bytearray:
        return self.to_client if sock is self.client else self.to_server


class PartitionProxy:
    """Forwards 127.0.0.1:`port` to `upstream` until told to drop or stall."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._links: dict[socket.socket, _Link] = {}
        self._mode: Mode = "open"
        self._filtered: list[socket.socket] = []
        self._trigger: tuple[bytes, Mode] | None = None
        self._requests: list[tuple[Mode, threading.Event]] = []
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._closed = False
        #: set when a `cut_after` pattern went by and the proxy partitioned
        self.cut = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="partition-proxy", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ control (test thread)
    def drop(self) -> None:
        self._request("drop")

    def stall(self) -> None:
        self._request("stall")

    def heal(self) -> None:
        self._request("open")

    def cut_after(self, pattern: bytes, mode: Mode = "drop") -> None:
        """Partition (`mode`) right after forwarding the client bytes that contain `pattern`."""
        with self._lock:
            self._trigger = (pattern, mode)
        self.cut.clear()

    @property
    def mode(self) -> Mode:
        return self._mode

    def close(self) -> None:
        self._closed = True
        self._wake_w.send(b"x")
        self._thread.join(5)
        for sock in [self._listener, *self._links, self._wake_r, self._wake_w]:
            sock.close()

    def _request(self, mode: Mode) -> None:
        done = threading.Event()
        with self._lock:
            self._requests.append((mode, done))
        self._wake_w.send(b"x")
        if not done.wait(10):
            raise TimeoutError(f"the proxy did not switch to {mode!r}")

    # ------------------------------------------------------------------ forwarding (proxy thread)
    def _loop(self) -> None:
        while not self._closed:
            self._watch()
            for key, events in self._selector.select(timeout=0.5):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self._wake_r:
                    sock.recv(4096)
                    self._apply_requests()
                elif self._mode != "open":
                    continue  # partitioned by an earlier event of this batch
                elif sock is self._listener:
                    self._accept()
                elif sock in self._links:
                    if events & selectors.EVENT_READ:
                        self._read(sock)
                    if events & selectors.EVENT_WRITE and sock in self._links:
                        self._write(sock)

    def _watch(self) -> None:
        """(Re)register every socket for what it may do now: nothing at all while partitioned."""
        wanted: dict[socket.socket, int] = {self._wake_r: selectors.EVENT_READ}
        if self._mode == "open":
            wanted[self._listener] = selectors.EVENT_READ
            for sock, link in self._links.items():
                wanted[sock] = selectors.EVENT_READ | (selectors.EVENT_WRITE if link.pending(sock) else 0)
        registered = self._selector.get_map()
        for key in list(registered.values()):
            if key.fileobj not in wanted:
                self._selector.unregister(key.fileobj)
        for sock, events in wanted.items():
            key = registered.get(sock)
            if key is None:
                self._selector.register(sock, events)
            elif key.events != events:
                self._selector.modify(sock, events)

    def _apply_requests(self) -> None:
        with self._lock:
            requests, self._requests = self._requests, []
        for mode, done in requests:
            self._partition(mode)
            done.set()

    def _partition(self, mode: Mode) -> None:
        for sock in self._filtered:
            with contextlib.suppress(OSError):  # closed meanwhile
                sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_FILTER, 0)
        self._filtered = []
        if mode == "drop":
            for sock in [self._listener, *self._links]:
                sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, _DROP_PROGRAM)
                self._filtered.append(sock)
        self._mode = mode

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        try:
            server = socket.create_connection(self._upstream, timeout=5)
        except OSError:
            client.close()
            return
        for sock in (client, server):
            sock.setblocking(False)
        link = _Link(client, server)
        self._links[client] = self._links[server] = link

    def _read(self, sock: socket.socket) -> None:
        link = self._links[sock]
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close(link)
            return
        peer, buffer = link.peer(sock)
        buffer += data
        if sock is link.client and self._trigger is not None:
            pattern, mode = self._trigger
            if pattern in link.tail + data:
                self._trigger = None
                self._flush(peer, buffer)
                self._partition(mode)
                self.cut.set()
                return
            link.tail = (link.tail + data)[-len(pattern) :]
        self._write(peer)

    def _write(self, sock: socket.socket) -> None:
        link = self._links[sock]
        buffer = link.pending(sock)
        try:
            sent = sock.send(buffer)
        except BlockingIOError:
            return
        except OSError:
            self._close(link)
            return
        del buffer[:sent]

    def _flush(self, sock: socket.socket, buffer: bytearray) -> None:
        """Send `buffer` whole now (the triggering statement must reach the server)."""
        sock.setblocking(True)
        try:
            sock.sendall(buffer)
            buffer.clear()
        finally:
            sock.setblocking(False)

    def _close(self, link: _Link) -> None:
        for sock in (link.client, link.server):
            self._links.pop(sock, None)
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(sock)
            sock.close()


def behind(proxy: PartitionProxy, db_url: str) -> str:
    """`db_url` reached through `proxy`."""
    return make_url(db_url).set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
