#!/usr/bin/env python3
"""Print the Debian archive URI this machine's apt is configured with.

The node image is bootstrapped from the same mirror apt uses here, read at
run time (never written into the repository): deb822 ``*.sources`` files and
one-line ``sources.list`` entries are both understood.  The first ``deb``
entry whose suite is ``SUITE`` (default bookworm) and that carries the
``main`` component wins; security and updates suites are not archives
debootstrap can start from.
"""

from __future__ import annotations

import glob
import sys
from collections.abc import Iterator


def _deb822_stanzas(text: str) -> Iterator[dict[str, str]]:
    stanza: dict[str, str] = {}
    key = ""
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        if not line.strip():
            if stanza:
                yield stanza
            stanza, key = {}, ""
            continue
        if line[0] in " \t" and key:
            stanza[key] += " " + line.strip()
            continue
        key, _, value = line.partition(":")
        key = key.strip().lower()
        stanza[key] = value.strip()
    if stanza:
        yield stanza


def _from_deb822(text: str, suite: str) -> Iterator[str]:
    for st in _deb822_stanzas(text):
        if st.get("enabled", "yes").lower() == "no":
            continue
        if "deb" not in st.get("types", "").split():
            continue
        if suite in st.get("suites", "").split() and "main" in st.get("components", "").split():
            yield from st.get("uris", "").split()


def _from_one_line(text: str, suite: str) -> Iterator[str]:
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if not words or words[0] != "deb":
            continue
        words = words[1:]
        if words and words[0].startswith("["):  # [arch=amd64 signed-by=…]
            while words and not words[0].endswith("]"):
                words = words[1:]
            words = words[1:]
        if len(words) >= 3 and words[1] == suite and "main" in words[2:]:
            yield words[0]


def mirrors(suite: str, root: str = "/etc/apt") -> list[str]:
    found: list[str] = []
    for path in sorted(glob.glob(f"{root}/sources.list.d/*.sources")):
        with open(path, encoding="utf-8") as f:
            found += _from_deb822(f.read(), suite)
    for path in [f"{root}/sources.list", *sorted(glob.glob(f"{root}/sources.list.d/*.list"))]:
        try:
            with open(path, encoding="utf-8") as f:
                found += _from_one_line(f.read(), suite)
        except FileNotFoundError:
            continue
    return found


def main() -> int:
    suite = sys.argv[1] if len(sys.argv) > 1 else "bookworm"
    found = mirrors(suite)
    if not found:
        print(f"apt_mirror.py: no 'deb' source for suite {suite} with component main in /etc/apt", file=sys.stderr)
        return 1
    print(found[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
