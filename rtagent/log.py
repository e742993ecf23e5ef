"""Logging to stderr in a journald-friendly form.

Under systemd, stderr goes to the journal, which adds its own timestamp; a
``<N>`` syslog-priority prefix lets journald keep the level (sd-daemon(3)).
Interactively we print a timestamp instead.
"""

from __future__ import annotations

import logging
import os
import sys

_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


class JournalFormatter(logging.Formatter):
    def __init__(self, journal: bool):
        fmt = "%(name)s: %(message)s" if journal else "%(asctime)s %(levelname)s %(name)s: %(message)s"
        super().__init__(fmt)
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if self.journal:
            prio = _PRIORITY.get(record.levelno, 6)
            # journald treats each line as a record: keep multi-line text (a
            # traceback) prefixed so it is not logged at the default level.
            return "\n".join(f"<{prio}>{line}" for line in text.splitlines())
        return text


def setup_logging(level: str = "info") -> None:
    journal = bool(os.environ.get("JOURNAL_STREAM"))
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JournalFormatter(journal))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("asyncio").setLevel(max(logging.INFO, root.level))
