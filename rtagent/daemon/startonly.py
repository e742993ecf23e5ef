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

:func:`forget_class_time` drops what only *defining* a dataclass uses
(``inspect``, with ``dis`` and ``opcode``) once every service has started,
also before the freeze; ``dataclasses`` gets a stand-in that imports it
again if a class is defined later.
"""

from __future__ import annotations

import gc
import importlib
import sys
import types

# Each with its submodules.  datetime: only tomllib's parser imports it in the daemon;
# locale (its alias tables ≈ 0.15 MB): only gettext (the interpreter's own
# encoding lookups are C, ``_locale``).
START_ONLY = ("argparse", "gettext", "locale", "tomllib", "datetime", "rtagent.argparsing")

# Imported by ``dataclasses`` and used by it only while it decorates a class
# without a docstring (its ``__doc__`` is made from ``inspect.signature``):
# ≈ 0.45 MB of objects (inspect 0.4, dis and opcode) once every daemon class
# exists.  Not ``ast``: inspect imports it, but ast's functions stay attached to
# the interpreter's own ``_ast`` classes, so dropping it frees nothing.
CLASS_TIME_ONLY = ("inspect", "dis", "opcode")
# The one module that may keep referring to them: it gets an :class:`_OnUse`.
CLASS_TIME_USER = "dataclasses"


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


class _OnUse(types.ModuleType):
    """Stands in for a dropped module in the module that refers to it: the
    first attribute asked for imports the module afresh, so a class
    ``dataclasses`` decorates later (a SIGHUP reload's, a lazily imported
    module's) works as before and only pays the import again."""

    def __getattr__(self, name: str) -> object:
        return getattr(importlib.import_module(self.__name__), name)


def _referrers(module: types.ModuleType) -> list[str]:
    """The loaded modules that refer to ``module`` by a global name."""
    return [name for name, m in list(sys.modules.items())
            if m is not None and m is not module and any(v is module for v in vars(m).values())]


def forget_class_time() -> list[str]:
    """Drop :data:`CLASS_TIME_ONLY` once the daemon's services have started
    (every class they define exists); returns the names dropped.  A module
    that anything but ``dataclasses`` or each other refers to (metrics on:
    prometheus_client's ``decorator`` imports inspect) keeps them all: they
    would stay alive anyway."""
    loaded = {name: sys.modules[name] for name in CLASS_TIME_ONLY if name in sys.modules}
    allowed = set(loaded) | {CLASS_TIME_USER}
    if not loaded or any(set(_referrers(m)) - allowed for m in loaded.values()):
        return []
    user = sys.modules.get(CLASS_TIME_USER)
    for name, module in loaded.items():
        del sys.modules[name]
        if user is not None and getattr(user, name, None) is module:
            setattr(user, name, _OnUse(name))
    names = sorted(loaded)
    loaded.clear()  # the last references: the collector frees the modules now
    gc.collect()  # their functions and classes are cycles
    return names
