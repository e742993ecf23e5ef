"""The daemon (``rtagent run``), in parts: the loop (``loop.py``: timers,
event queue, signals), the guest supervisor (``guests.py``: cache, retry
schedule in ``retry.py``, drift accounting in ``drift.py``), the host-side
supervisor (``hostside.py``), the libvirt link (``link.py``), the services
it offers (``services.py``) and the single-instance lock (``lock.py``)."""

from .loop import Daemon, run

__all__ = ["Daemon", "run"]
