"""A benchmarked daemon runs as the package runs it.

Three things make a daemon started from a checkout differ from the
installed one, and each showed in its resident memory (docs/benchmarks.md):

- *The unit's environment.*  ``systemd/rtagent.service`` runs the
  interpreter with ``PYTHONOPTIMIZE=2`` and a bytecode cache of its own
  (``PYTHONPYCACHEPREFIX``): no docstrings, 0.9 MiB less.  The benchmark
  reads the ``Environment=`` lines of the tree under test, so an old tree
  runs as its own unit said, and points the cache at ``build/`` of that tree
  (never at a real install's ``/var/cache/rtagent``).
- *Bytecode.*  The package's install byte-compiles (py3compile) and the
  unit's first start writes the ``-OO`` files; a checkout or a ``git
  archive`` has stale or none, and with ``PYTHONDONTWRITEBYTECODE`` (set on
  this machine) every daemon compiled every module in memory and kept the
  garbage (measured 0.4-0.65 MiB).  :func:`warm` imports every module of the
  tree once in that environment first; the daemons may then write what a
  lazy import still lacks, as the unit's daemon does.
- *The path.*  The development venv's editable install puts a finder on
  every interpreter's path (a ``.pth`` file), and the finder imports
  ``pathlib``, ``urllib.parse`` and ``ipaddress``, which an installed
  daemon need not load.  Daemons run with ``python -S`` and the venv's
  site-packages on ``PYTHONPATH`` instead.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import sysconfig
from pathlib import Path

UNIT = Path("systemd") / "rtagent.service"
# Imports every module of the tree's package, so the bytecode of all of
# them and of what they import is written before the first measured daemon.
_WARM = """
import importlib, pkgutil, sys
import rtagent
failed = []
for m in pkgutil.walk_packages(rtagent.__path__, "rtagent."):
    if m.name.rsplit(".", 1)[-1] == "__main__":
        continue  # it runs the CLI
    try:
        importlib.import_module(m.name)
    except Exception as err:  # an old tree's optional module: say so, go on
        failed.append(f"{m.name}: {type(err).__name__}: {err}")
print("\\n".join(failed), file=sys.stderr)
"""

_warmed: set[Path] = set()


def unit_environment(text: str) -> dict[str, str]:
    """The ``Environment=`` assignments of a unit file's text, as systemd
    reads them: space-separated ``NAME=VALUE`` words, a word may be quoted,
    later lines override, an empty ``Environment=`` resets the list."""
    env: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("Environment="):
            continue
        rest = line[len("Environment="):]
        if not rest.strip():
            env.clear()
        for word in shlex.split(rest):
            name, sep, value = word.partition("=")
            if sep and name:
                env[name] = value
    return env


def tree_unit_env(tree: Path) -> dict[str, str]:
    """The tree's unit environment, its bytecode cache moved into the tree."""
    unit = tree / UNIT
    env = unit_environment(unit.read_text()) if unit.exists() else {}
    if "PYTHONPYCACHEPREFIX" in env:
        env["PYTHONPYCACHEPREFIX"] = str(tree / "build" / "bench-bytecode")
    return env


def site_paths() -> list[str]:
    """This interpreter's site-packages (the venv's), for ``python -S``."""
    paths = sysconfig.get_paths()
    return list(dict.fromkeys(p for p in (paths["purelib"], paths["platlib"]) if p))


def command(*args: str) -> list[str]:
    """This interpreter, started as the daemon's would be (see above)."""
    return [sys.executable, "-S", *args]


def installed_env(tree: Path, **extra: str) -> dict[str, str]:
    """The environment of a daemon of ``tree`` run as installed, its bytecode
    warmed: the unit's variables, ``tree`` and site-packages on the path,
    ``MALLOC_ARENA_MAX`` as older trees got it from their unit (newer ones
    set it themselves, daemon/heap.py), no ``PYTHONDONTWRITEBYTECODE``."""
    tree = Path(tree).resolve()
    env = dict(os.environ, PYTHONUNBUFFERED="1", MALLOC_ARENA_MAX="2")
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update(tree_unit_env(tree))
    env["PYTHONPATH"] = os.pathsep.join([str(tree), *site_paths(), *filter(None, [os.environ.get("PYTHONPATH")])])
    warm(tree, env)
    env.update(extra)
    return env


def warm(tree: Path, env: dict[str, str]) -> None:
    """Write the bytecode of every module of ``tree`` (once per process)."""
    if tree in _warmed:
        return
    out = subprocess.run(command("-c", _WARM), env=env, cwd=str(tree), capture_output=True, text=True, timeout=300)
    if out.returncode != 0 or out.stderr.strip():
        print(f"  bench: warming {tree}'s bytecode: rc {out.returncode}; {out.stderr.strip()[-800:]}", flush=True)
    _warmed.add(tree)
