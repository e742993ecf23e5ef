"""rtagent's parser formats exactly as argparse's own (rtagent/argparsing.py
only avoids importing shutil for the terminal width)."""

from __future__ import annotations

import argparse
import os

import pytest

from rtagent import argparsing, cli
from rtagent.argparsing import columns

pytestmark = pytest.mark.unit


def _helps(parser: argparse.ArgumentParser) -> list[str]:
    """The help of the parser and of every subparser, depth first."""
    out = [parser.format_help(), parser.format_usage()]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                out += _helps(sub)
    return out


@pytest.mark.parametrize("width", ["40", "80", "123", "", "junk"])
def test_every_help_text_is_argparses_own(monkeypatch, width):
    if width:
        monkeypatch.setenv("COLUMNS", width)
    else:
        monkeypatch.delenv("COLUMNS", raising=False)
    ours = _helps(cli.build_parser())
    monkeypatch.setattr(argparsing, "Parser", argparse.ArgumentParser)  # what build_parser imports
    assert ours == _helps(cli.build_parser())


def test_columns_as_shutil_reads_them(monkeypatch):
    import shutil  # the reference (here only: the test process may import it)

    for value in ("55", "0", "-3", "x", None):
        if value is None:
            monkeypatch.delenv("COLUMNS", raising=False)
        else:
            monkeypatch.setenv("COLUMNS", value)
        assert columns() == shutil.get_terminal_size().columns, value
    assert os.environ.get("COLUMNS") is None
