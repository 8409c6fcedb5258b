#!/usr/bin/env bash
# make deb: build/dbslower_<version>_<arch>.deb with dpkg-deb, from this checkout.
# The package uses Debian's Python and bcc (python3-bpfcc); its files:
#   /usr/bin/dbslower, /usr/lib/python3/dist-packages/dbslower/, the man page,
#   bash completion, the systemd unit, /etc/dbslower/dbslower.toml (a conffile)
#   and the Grafana dashboard.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
VERSION=$(PYTHONPATH=src /usr/bin/python3 -c 'import dbslower; print(dbslower.__version__)')
# Not "all": the package carries the JSON writer's compiled helper
# (src/dbslower/_jsonlines.c), built by `make setup` for this machine's
# architecture and Debian's Python, whose minor version it is tied to.
ARCH=$(dpkg --print-architecture)
PYVER=$(/usr/bin/python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
PYNEXT=$(/usr/bin/python3 -c 'import sys; print("%d.%d" % (sys.version_info[0], sys.version_info[1] + 1))')
PKG=build/deb/dbslower_${VERSION}_${ARCH}
rm -rf "$PKG"
install -d "$PKG/DEBIAN" "$PKG/usr/bin" "$PKG/usr/lib/python3/dist-packages" \
  "$PKG/usr/share/man/man1" "$PKG/usr/share/bash-completion/completions" "$PKG/lib/systemd/system" \
  "$PKG/etc/dbslower" "$PKG/usr/share/dbslower" "$PKG/usr/share/doc/dbslower"

# The Python package, without caches (postinst byte-compiles it, prerm removes that).
cp -r src/dbslower "$PKG/usr/lib/python3/dist-packages/"
find "$PKG/usr/lib/python3/dist-packages" -name __pycache__ -prune -exec rm -rf {} +
rm -f "$PKG/usr/lib/python3/dist-packages/dbslower/_jsonlines.c"
ls "$PKG"/usr/lib/python3/dist-packages/dbslower/_jsonlines.cpython-*.so >/dev/null ||
  { echo "deb: src/dbslower/_jsonlines*.so is missing (make setup builds it)" >&2; exit 1; }
cat > "$PKG/usr/bin/dbslower" <<'PY'
#!/usr/bin/python3
# PYTHON_ARGCOMPLETE_OK
import sys

from dbslower.cli import main

sys.exit(main())
PY
chmod 755 "$PKG/usr/bin/dbslower"

"$PY" scripts/manpage.py build/dbslower.1
gzip -9n -c build/dbslower.1 > "$PKG/usr/share/man/man1/dbslower.1.gz"
register-python-argcomplete dbslower > "$PKG/usr/share/bash-completion/completions/dbslower"
install -m 644 contrib/dbslower.service "$PKG/lib/systemd/system/dbslower.service"
install -m 644 contrib/dbslower.toml "$PKG/etc/dbslower/dbslower.toml"
install -m 644 contrib/grafana-dashboard.json "$PKG/usr/share/dbslower/grafana-dashboard.json"
cat > "$PKG/usr/share/doc/dbslower/copyright" <<'TXT'
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: dbslower
Files: *
License: Apache-2.0
 On Debian systems the full text is in /usr/share/common-licenses/Apache-2.0.
TXT

SIZE=$(du -sk --exclude=DEBIAN "$PKG" | cut -f1)
cat > "$PKG/DEBIAN/control" <<TXT
Package: dbslower
Version: $VERSION
Architecture: $ARCH
Maintainer: dbslower developers <dbslower@localhost>
Installed-Size: $SIZE
Depends: python3 (>= $PYVER), python3 (<< $PYNEXT), python3-bpfcc, python3-prometheus-client, adduser
Recommends: linux-headers-amd64 | linux-headers-generic, python3-argcomplete, bash-completion
Section: database
Priority: optional
Description: live slow statements of PostgreSQL and MySQL/MariaDB, traced with eBPF
 dbslower shows which PostgreSQL and MySQL/MariaDB statements are slow, live,
 measured inside the server with USDT probes or uprobes and aggregated in the
 kernel, without changing the server's configuration or restarting it.
 It runs as a command (dbslower postgres|mysql), a full-screen view
 (dbslower top) and a service with a Prometheus endpoint (dbslower serve).
TXT
echo /etc/dbslower/dbslower.toml > "$PKG/DEBIAN/conffiles"
cat > "$PKG/DEBIAN/postinst" <<'SH'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
    # The service's user (contrib/dbslower.service); it gets capabilities, not root.
    adduser --system --group --no-create-home --home /nonexistent --quiet dbslower
    py3compile -p dbslower
    if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
fi
SH
cat > "$PKG/DEBIAN/prerm" <<'SH'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then systemctl stop dbslower.service 2>/dev/null || true; fi
py3clean -p dbslower
SH
cat > "$PKG/DEBIAN/postrm" <<'SH'
#!/bin/sh
set -e
if [ "$1" = purge ]; then
    rm -rf /var/log/dbslower
    rmdir /etc/dbslower 2>/dev/null || true
fi
if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
SH
chmod 755 "$PKG/DEBIAN/postinst" "$PKG/DEBIAN/prerm" "$PKG/DEBIAN/postrm"
dpkg-deb --root-owner-group --build "$PKG" "build/dbslower_${VERSION}_${ARCH}.deb" >/dev/null
echo "build/dbslower_${VERSION}_${ARCH}.deb"
