"""daemon/heap.py: freed heap inside glibc's arena goes back to the kernel."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rtagent.daemon import heap

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def test_trim_returns_interior_free_pages():
    """64 MiB of 64 KiB buffers (below the mmap threshold: from the heap),
    every one but the last freed: free() keeps them resident (the last one
    pins the top of the heap); trim() gives them back."""
    if not heap.available():
        pytest.skip("libc without malloc_trim")
    code = textwrap.dedent("""
        import os
        from rtagent.daemon import heap
        def rss():
            return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") >> 20
        bufs = [bytearray(64 << 10) for _ in range(1024)]
        for b in bufs:
            b[::4096] = b"x" * len(b[::4096])  # touch every page
        keep = bufs[-1]
        del bufs
        before = rss()
        released = heap.trim()
        print(before - rss(), released)
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "MALLOC_ARENA_MAX": "2"})
    assert out.returncode == 0, out.stderr
    freed_mib, released = out.stdout.split()
    assert released == "True"
    assert int(freed_mib) >= 48
