"""A relay in front of the real libvirtd socket that a test can freeze.

While frozen it moves no byte in either direction and accepts no new
connection (the kernel's listen backlog holds them): to its clients that is
exactly a SIGSTOPped libvirtd, without stopping the libvirtd that the other
tests on this machine share.  Thawed, it relays again.  A daemon reaches it
with ``qemu+unix:///system?socket=<path>``.

``open_connections()`` counts the client connections the relay holds: the
connections the daemon keeps to "libvirtd" (a leak shows there).
"""

from __future__ import annotations

import os
import selectors
import socket
import threading
import time

LIBVIRT_SOCK = "/run/libvirt/libvirt-sock"


class FreezableProxy:
    def __init__(self, path: str, target: str = LIBVIRT_SOCK):
        self.path = path
        self.target = target
        self._frozen = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self.accepted = 0
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(path)
        os.chmod(path, 0o600)
        self._listener.listen(64)
        self._thread = threading.Thread(target=self._run, name="libvirt-proxy", daemon=True)

    @property
    def uri(self) -> str:
        return f"qemu+unix:///system?socket={self.path}"

    def start(self) -> FreezableProxy:
        self._thread.start()
        return self

    def freeze(self) -> None:
        self._frozen.set()

    def thaw(self) -> None:
        self._frozen.clear()

    def open_connections(self) -> int:
        with self._lock:
            return len(self._pairs)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        with self._lock:
            for a, b in self._pairs:
                a.close()
                b.close()
            self._pairs.clear()
        self._listener.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    # -- the relay (one thread, one selector) --------------------------------

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._listener, selectors.EVENT_READ, None)
        while not self._stop.is_set():
            if self._frozen.is_set():
                time.sleep(0.05)  # nothing moves, nothing is accepted
                continue
            for key, _ in sel.select(0.05):
                if key.data is None:
                    self._accept(sel)
                else:
                    self._pump(sel, key.fileobj, key.data)
        sel.close()

    def _accept(self, sel: selectors.BaseSelector) -> None:
        client, _ = self._listener.accept()
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        upstream.connect(self.target)
        with self._lock:
            self._pairs.append((client, upstream))
            self.accepted += 1
        sel.register(client, selectors.EVENT_READ, upstream)
        sel.register(upstream, selectors.EVENT_READ, client)

    def _pump(self, sel: selectors.BaseSelector, src: socket.socket, dst: socket.socket) -> None:
        try:
            data = src.recv(65536)
            if data:
                dst.sendall(data)
                return
        except OSError:
            pass
        # One side closed: close the pair (libvirt sees EOF on the other side).
        for s in (src, dst):
            try:
                sel.unregister(s)
            except (KeyError, ValueError):
                pass
            s.close()
        with self._lock:
            self._pairs = [p for p in self._pairs if src not in p]
