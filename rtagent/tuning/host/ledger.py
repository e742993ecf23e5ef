"""The saved originals: what each host item was before rtagent first changed it.

The first time an item is changed its original value is written to the JSON
state file (``host_tuning.state_file``) *before* the change, so a crash never
loses it; later changes of the same item keep the first original.  A fresh
enforcer (a restarted daemon, ``rtagent host apply``) continues the same
file; ``restore`` empties it.  The write is atomic (temp file, fsync,
rename).
"""

from __future__ import annotations

import errno
import json
import os
from typing import Any

__all__ = ["Ledger", "STATE_VERSION"]

STATE_VERSION = 1


class Ledger:
    def __init__(self, path: str):
        self.path = path
        self._entries: dict[str, dict[str, Any]] | None = None

    def entries(self) -> dict[str, dict[str, Any]]:
        """``{key: entry}``, read once from the file.  Raises OSError(EIO) for
        an unreadable or malformed file (nothing may be changed then: the
        originals could not be kept)."""
        if self._entries is None:
            entries: dict[str, dict[str, Any]] = {}
            try:
                with open(self.path) as fh:
                    data = json.load(fh)
            except FileNotFoundError:
                data = None
            except (OSError, ValueError) as err:
                raise OSError(errno.EIO, f"state file {self.path} unreadable: {err}") from None
            if isinstance(data, dict) and isinstance(data.get("entries"), dict):
                entries = dict(data["entries"])
            self._entries = entries
        return self._entries

    def __contains__(self, key: str) -> bool:
        return key in self.entries()

    def keys(self) -> set[str]:
        return set(self.entries())

    def add(self, key: str, entry: dict[str, Any]) -> bool:
        """Remember ``entry`` unless ``key`` already has one; True if added."""
        entries = self.entries()
        if key in entries:
            return False
        entries[key] = entry
        return True

    def set_entries(self, entries: dict[str, dict[str, Any]]) -> None:
        """Replace every entry (a caller that keeps its own typed view)."""
        self._entries = dict(entries)

    def drop(self, keys: list[str] | set[str]) -> None:
        for k in keys:
            self.entries().pop(k, None)

    def save(self) -> None:
        """Write the file (or remove it when empty).  Raises OSError."""
        entries = self.entries()
        path = self.path
        if not entries:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            return
        folder, name = os.path.split(path)
        os.makedirs(folder or ".", mode=0o755, exist_ok=True)
        tmp = os.path.join(folder, f".{name}.{os.getpid()}.tmp")
        body = json.dumps({"version": STATE_VERSION, "written_by": "rtagent", "entries": entries},
                          indent=1, sort_keys=True)
        with open(tmp, "w") as fh:
            fh.write(body + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
