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


def test_configure_keeps_large_buffers_out_of_the_heap():
    """After one large buffer is freed glibc would serve the next ones from
    the heap (its threshold follows the largest freed mapping); configured,
    each is its own mapping and gone at free()."""
    if not heap.available():
        pytest.skip("libc without mallopt")
    code = textwrap.dedent("""
        import os, sys
        from rtagent.daemon import heap
        def rss():
            return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") >> 20
        if sys.argv[1] == "on":
            assert heap.configure()
        big = bytearray(360 << 10)
        del big  # glibc's threshold rises to this size here unless configured
        bufs, pins = [], []
        for _ in range(256):  # 50 MiB, each buffer followed by a small block that stays
            bufs.append(bytearray(200 << 10))
            pins.append(bytearray(100 << 10))
        before = rss()
        del bufs  # from the heap: holes between the pins, kept resident
        print(before - rss())
    """)
    freed = {}
    for mode in ("off", "on"):
        out = subprocess.run([sys.executable, "-c", code, mode], cwd=REPO, capture_output=True, text=True,
                             timeout=60, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
        assert out.returncode == 0, out.stderr
        freed[mode] = int(out.stdout)
    assert freed["on"] >= 40, freed
    assert freed["off"] < 10, freed  # what the daemon saw before: glibc kept them


@pytest.mark.parametrize("configured", [False, True])
def test_configure_caps_the_arenas_without_the_environment(tmp_path, configured):
    """Six threads allocating at once: glibc gives them arenas of their own
    (up to 8 per CPU), unless configure() capped them at 2 — with no
    MALLOC_ARENA_MAX in the environment (the daemon must not depend on the
    unit setting it)."""
    if not heap.available():
        pytest.skip("libc without mallopt")
    code = textwrap.dedent("""
        import ctypes, sys, threading
        from rtagent.daemon import heap
        if sys.argv[1] == "True":
            assert heap.configure()
        go = threading.Barrier(6)
        held = []
        def work():
            go.wait()  # all at once: contention is what makes glibc add arenas
            held.append([bytearray(1000) for _ in range(2000)])
        threads = [threading.Thread(target=work) for _ in range(6)]
        for t in threads: t.start()
        for t in threads: t.join()
        libc = ctypes.CDLL(None)
        libc.fopen.restype = ctypes.c_void_p
        libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
        libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
        libc.fclose.argtypes = [ctypes.c_void_p]
        f = libc.fopen(sys.argv[2].encode(), b"w")
        libc.malloc_info(0, f)
        libc.fclose(f)
    """)
    info = tmp_path / "malloc.xml"
    out = subprocess.run([sys.executable, "-c", code, str(configured), str(info)], cwd=REPO, capture_output=True,
                         text=True, timeout=60, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    arenas = info.read_text().count("<heap nr=")
    assert arenas <= heap.ARENA_MAX if configured else arenas > heap.ARENA_MAX
