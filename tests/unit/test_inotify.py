"""The inotify wrapper (rtagent/kernel/inotify.py): decoding, and a real
descriptor on a temporary directory (no root needed)."""

from __future__ import annotations

import os
import struct

import pytest

from rtagent.kernel import inotify

pytestmark = pytest.mark.unit


def _raw(wd: int, mask: int, name: bytes) -> bytes:
    padded = name + b"\0" * (16 - len(name)) if name else b""
    return struct.pack("=iIII", wd, mask, 0, len(padded)) + padded


def test_parse_decodes_several_events_and_strips_the_padding():
    buf = _raw(3, inotify.IN_CREATE | inotify.IN_ISDIR, b"iothread7") + _raw(4, inotify.IN_MODIFY, b"") \
        + _raw(-1, inotify.IN_Q_OVERFLOW, b"")
    events = inotify.parse(buf)
    assert [(e.wd, e.name) for e in events] == [(3, "iothread7"), (4, ""), (-1, "")]
    assert events[0].mask & inotify.IN_ISDIR and not events[0].overflow
    assert events[2].overflow


def test_a_real_watch_sees_mkdir_and_a_write(tmp_path):
    ino = inotify.Inotify()
    try:
        assert ino.read() == []  # non-blocking
        top = ino.add(str(tmp_path), inotify.IN_CREATE | inotify.IN_ONLYDIR)
        (tmp_path / "iothread3").mkdir()
        created = ino.read()
        assert [(e.wd, e.name, bool(e.mask & inotify.IN_ISDIR)) for e in created] == [(top, "iothread3", True)]
        child = ino.add(str(tmp_path / "iothread3"), inotify.IN_MODIFY)
        (tmp_path / "iothread3" / "cpuset.cpus").write_text("")  # created, not yet modified
        ino.read()
        with open(tmp_path / "iothread3" / "cpuset.cpus", "w") as f:
            f.write("0")
        assert any(e.wd == child and e.name == "cpuset.cpus" and e.mask & inotify.IN_MODIFY for e in ino.read())
        ino.remove(child)
        ino.remove(child)  # already gone: not an error
    finally:
        ino.close()


def test_watching_a_missing_path_raises_enoent(tmp_path):
    ino = inotify.Inotify()
    try:
        with pytest.raises(FileNotFoundError):
            ino.add(str(tmp_path / "nope"), inotify.IN_CREATE)
    finally:
        ino.close()
    assert ino.fd == -1
    assert os.path.isdir(tmp_path)
