#!/usr/bin/env bash
# Idempotent setup for a fresh Debian 12 machine, run as root.
# Installs BCC, the database servers and clients, the workload tools, a venv
# that can see Debian's python3-bpfcc, tracefs, and kernel headers for BCC.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
STAMP=$VENV/.setup-done

warn() { printf 'setup: WARNING: %s\n' "$*" >&2; }
note() { printf 'setup: %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  echo "setup: must run as root (it installs packages and mounts tracefs)" >&2
  exit 1
fi

PKGS="bpfcc-tools python3-bpfcc python3-venv linux-headers-amd64
postgresql-15 postgresql-client-15 postgresql-contrib
mariadb-server mariadb-client sysbench percona-toolkit
systemtap-sdt-dev gcc g++ make procps python3-dev
python3-prometheus-client python3-argparse-manpage python3-argcomplete
prometheus tmux systemd man-db util-linux dpkg-dev bpftool nodejs"

missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  note "installing:$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # The packaged services must not start on their own: tests start their
  # own servers in temporary directories.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d
  apt-get install -y -qq $missing >/dev/null
  rm -f /usr/sbin/policy-rc.d
fi

# tracefs: uprobes are created through it.
if [ ! -e /sys/kernel/tracing/uprobe_events ] && [ ! -e /sys/kernel/debug/tracing/uprobe_events ]; then
  mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null || warn "could not mount tracefs"
fi

# Kernel headers: BCC compiles against them.
KREL=$(uname -r)
KDIR=/lib/modules/$KREL
if [ ! -e "$KDIR/build/include" ] || [ ! -e "$KDIR/source/include/linux/kconfig.h" ]; then
  if apt-get install -y -qq "linux-headers-$KREL" >/dev/null 2>&1; then
    note "installed linux-headers-$KREL"
  else
    generic=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1)
    if [ -z "$generic" ]; then
      echo "setup: no kernel headers for $KREL and no linux-headers-amd64 to fall back on" >&2
      exit 1
    fi
    # Debian splits the headers: -amd64 holds the generated files, -common
    # the sources; BCC reads them as build/ and source/.
    common=${generic%-amd64}-common
    [ -d "$common" ] || common=$generic
    mkdir -p "$KDIR"
    ln -sfn "$generic" "$KDIR/build"
    ln -sfn "$common" "$KDIR/source"
    warn "no linux-headers-$KREL package; linked $generic (and $common) as the headers for $KREL."
    warn "this works for dbslower because its BPF programs only use pt_regs."
  fi
fi

# The venv sees Debian's bcc through --system-site-packages.
if [ ! -x "$VENV/bin/python" ]; then
  /usr/bin/python3 -m venv --system-site-packages "$VENV"
fi
# The editable install also compiles the JSON writer's helper
# (src/dbslower/_jsonlines.c, setup.py) next to its source.
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ] || [ setup.py -nt "$STAMP" ] ||
   [ src/dbslower/_jsonlines.c -nt "$STAMP" ]; then
  "$VENV/bin/pip" install -q --disable-pip-version-check -e '.[test]'
  touch "$STAMP"
fi
"$VENV/bin/python" -c 'import dbslower._jsonlines' ||
  { echo "setup: the compiled helper dbslower._jsonlines did not build (gcc, python3-dev)" >&2; exit 1; }
"$VENV/bin/python" -c 'import bcc' || { echo "setup: bcc is not importable from $VENV" >&2; exit 1; }
# Node.js drivers the tests use (tests/node/package.json). Debian's nodejs
# comes without npm (NodeSource's includes it).
command -v npm >/dev/null || apt-get install -y -qq npm >/dev/null
if [ ! -d tests/node/node_modules ] || [ tests/node/package.json -nt tests/node/node_modules ]; then
  npm install --prefix tests/node --no-audit --no-fund --silent
  touch tests/node/node_modules
fi
note "ready"
