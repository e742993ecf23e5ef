"""argparse without shutil.

argparse's ``HelpFormatter`` asks ``shutil.get_terminal_size()`` for the
width, and ``add_argument`` makes a formatter to check each metavar, so
building the command line imported ``shutil`` — and with it ``bz2``,
``lzma`` and ``zlib`` — in every rtagent process, the daemon included,
which kept them for its life (≈ 0.4 MiB of its RSS).  :class:`Parser` makes
its formatters (and its subparsers') with the same width, read here the
way ``shutil.get_terminal_size`` reads it: ``$COLUMNS``, else the terminal
of stdout, else 80.
"""

from __future__ import annotations

import argparse
import os
import sys

__all__ = ["Parser", "Formatter", "columns"]


def columns() -> int:
    """The terminal's width as ``shutil.get_terminal_size().columns`` gives it."""
    try:
        width = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        width = 0
    if width <= 0:
        try:
            width = os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (AttributeError, ValueError, OSError):
            width = 0
    return width or 80


class Formatter(argparse.HelpFormatter):
    """argparse's own, given the width it would have computed."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        super().__init__(prog, indent_increment, max_help_position, columns() - 2 if width is None else width)


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose formatters are :class:`Formatter`; its
    subparsers are of this class too (``add_subparsers`` uses the parent's)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", Formatter)
        super().__init__(*args, **kwargs)
