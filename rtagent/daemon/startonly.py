"""Modules only the daemon's start-up needs, dropped once it has started.

``rtagent run`` parses its command line with ``argparse`` (and with it
``gettext`` and ``locale``) and its config with ``tomllib`` (and with it the pure-Python
``datetime``, ≈ 0.2 MB of its own) — once.  Imported, a module lives as
long as ``sys.modules`` holds it: ≈ 0.75 MB of the daemon's objects
(issue 14's RSS goal) for code it never runs again.  :func:`forget`
removes them from ``sys.modules`` and the collector frees them, provided
nothing else still refers to them: rtagent's own modules import them
inside the functions that use them (``cli.build_parser``,
``config.load_config``), and the parsed arguments are a plain namespace
(``cli.main``).  A later use imports them afresh — the config a SIGHUP
loads: the reload calls :func:`forget` again.

A module another still refers to (a third-party one that imported it) is
kept alive by that reference and only leaves ``sys.modules``; whoever
imports it next gets a fresh copy, which works the same.  :func:`forget`
must run before ``gc.freeze`` (monitor/gcpause.py): a frozen cycle is
never collected.  ``typing``'s caches of subscripted forms are cleared
with them: an entry made while tomllib was imported kept it alive.
"""

from __future__ import annotations

import gc
import sys

# Each with its submodules.  datetime: only tomllib's parser imports it in the daemon;
# locale (its alias tables ≈ 0.15 MB): only gettext (the interpreter's own
# encoding lookups are C, ``_locale``).
START_ONLY = ("argparse", "gettext", "locale", "tomllib", "datetime", "rtagent.argparsing")


def _start_only(name: str) -> bool:
    return any(name == m or name.startswith(m + ".") for m in START_ONLY)


def forget() -> list[str]:
    """Drop the start-up modules; returns the names dropped."""
    names = [name for name in list(sys.modules) if _start_only(name)]
    for name in names:
        module = sys.modules.pop(name, None)
        parent, _, child = name.rpartition(".")
        if parent and getattr(sys.modules.get(parent), child, None) is module:
            delattr(sys.modules[parent], child)  # `import pkg.mod` binds mod on its package too
    if names:
        _clear_typing_caches()  # typing's memo of `X[...]` forms refers to their classes
        gc.collect()  # their classes and functions are cycles
    return names


def _clear_typing_caches() -> None:
    """What ``typing`` runs to clear its caches (each an ``lru_cache`` of
    subscripted forms: refilled on use)."""
    typing = sys.modules.get("typing")
    for clear in getattr(typing, "_cleanups", ()):
        clear()
