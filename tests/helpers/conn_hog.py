"""A local user holding a server's connections (run as an unprivileged user).

Standard library only: the tests run it with the system ``python3 -c`` under
``setpriv --reuid`` (the user cannot read the test's virtualenv).

    conn_hog.py MODE HOST PORT N

``idle``: keep N connections open, saying nothing; any the server closes
are re-opened (at most one reconnect pass every 0.2 s), as an attacker would.
``slowloris``: N connections each sending an endless request head, one byte
every 0.5 s, re-opened when closed.

One JSON line on stdout every 0.5 s: ``open`` (connections open now),
``connects`` (successful connects so far), ``failed`` (connects refused or
timed out), ``closed_by_server``.  Ends when stdin closes or after 600 s.
"""

from __future__ import annotations

import json
import os
import selectors
import socket
import sys
import time

SLOW_HEAD = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: "


def main() -> None:
    mode, host, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    sel = selectors.DefaultSelector()
    sel.register(sys.stdin, selectors.EVENT_READ, "stdin")
    socks: dict[int, socket.socket] = {}
    stats = {"open": 0, "connects": 0, "failed": 0, "closed_by_server": 0, "peak_open": 0}
    end = time.monotonic() + 600
    next_report = next_reconnect = next_drip = 0.0
    while time.monotonic() < end:
        now = time.monotonic()
        if now >= next_reconnect:
            next_reconnect = now + 0.2
            for _ in range(n - len(socks)):
                s = socket.socket()
                s.settimeout(2)
                try:
                    s.connect((host, port))
                except OSError:
                    stats["failed"] += 1
                    s.close()
                    break
                s.setblocking(False)
                if mode == "slowloris":
                    try:
                        s.send(SLOW_HEAD)
                    except OSError:
                        pass
                socks[s.fileno()] = s
                sel.register(s, selectors.EVENT_READ, "conn")
                stats["connects"] += 1
        if mode == "slowloris" and now >= next_drip:
            next_drip = now + 0.5
            for s in list(socks.values()):
                try:
                    s.send(b"a")
                except OSError:
                    pass
        for key, _ in sel.select(0.05):
            if key.data == "stdin":
                if not os.read(sys.stdin.fileno(), 4096):
                    return
                continue
            s = key.fileobj
            try:
                data = s.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:  # closed (or reset) by the server
                sel.unregister(s)
                socks.pop(s.fileno(), None)
                s.close()
                stats["closed_by_server"] += 1
        stats["open"] = len(socks)
        stats["peak_open"] = max(stats["peak_open"], stats["open"])
        if now >= next_report:
            next_report = now + 0.5
            print(json.dumps(stats), flush=True)


if __name__ == "__main__":
    main()
