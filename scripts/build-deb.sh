#!/usr/bin/env bash
# Build rtagent_<version>_all.deb from this checkout (committed and
# uncommitted files alike, nothing ignored by git) with Debian's own tooling:
# dpkg-buildpackage, debhelper, dh-python/pybuild.  The build runs in a copy
# so the work tree stays clean.  Prints the path of the .deb.
# Usage: scripts/build-deb.sh [OUTDIR]   (default: dist/)
# Needs: apt-get install debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools
set -euo pipefail
cd "$(dirname "$0")/.."
outdir=$(mkdir -p "${1:-dist}" && cd "${1:-dist}" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/rtagent"
git ls-files -z -co --exclude-standard | while IFS= read -r -d '' f; do
  [ -e "$f" ] && printf '%s\0' "$f"
done | tar --null -T - -cf - | tar -xf - -C "$work/rtagent"
# Debian's python3 (pybuild needs its python3-build), not a pyenv or venv one.
(cd "$work/rtagent" && env PATH=/usr/sbin:/usr/bin:/sbin:/bin dpkg-buildpackage -b -us -uc > "$work/build.log" 2>&1) || {
  tail -n 40 "$work/build.log" >&2
  exit 1
}
version=$(dpkg-parsechangelog -l debian/changelog -S Version)
deb=$work/rtagent_${version}_all.deb
cp "$deb" "$outdir/"
echo "$outdir/$(basename "$deb")"
