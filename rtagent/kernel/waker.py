"""A self-pipe that wakes a thread blocked in ``select``/``poll`` for stop.

Watcher threads block with no timeout (an idle host costs them no
wake-ups); their ``stop()`` calls :meth:`Waker.wake`, which makes
:meth:`fileno` readable.
"""

from __future__ import annotations

import os


class Waker:
    def __init__(self) -> None:
        self._r, self._w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)

    def fileno(self) -> int:
        """The read end: readable once :meth:`wake` was called."""
        return self._r

    def wake(self) -> None:
        try:
            os.write(self._w, b"x")
        except OSError:  # full (already woken) or closed
            pass

    def close(self) -> None:
        for fd in (self._r, self._w):
            try:
                os.close(fd)
            except OSError:
                pass
