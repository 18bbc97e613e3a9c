#!/usr/bin/env bash
# Builds a Debian package of the agent with the layout of install.sh:
#
#   packaging/build-deb.sh [--out DIR]      -> DIR/bpfprof_<version>_<arch>.deb
#
# A virtualenv cannot be moved once made, so the package carries wheels of
# bpfprof and its dependencies (/opt/bpfprof/wheels) and its postinst builds
# /opt/bpfprof/venv from them, offline, with Debian's python3 and
# --system-site-packages (for BCC). The unit goes to /lib/systemd/system,
# the config is a conffile.
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$REPO_DIR/dist"
[[ ${1:-} == --out ]] && OUT="${2:?--out needs a directory}"
PYTHON=/usr/bin/python3

VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' "$REPO_DIR/pyproject.toml" | head -1)"
ARCH="$(dpkg --print-architecture)"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
ROOT="$WORK/bpfprof_${VERSION}_${ARCH}"

echo "==> wheels"
"$PYTHON" -m venv "$WORK/build-venv"
"$WORK/build-venv/bin/pip" wheel --quiet --disable-pip-version-check \
    --wheel-dir "$ROOT/opt/bpfprof/wheels" "$REPO_DIR"

echo "==> files"
install -d "$ROOT/lib/systemd/system" "$ROOT/etc/bpfprof" "$ROOT/opt/bpfprof/share/doc" \
    "$ROOT/DEBIAN"
sed -e "s#@PREFIX@#/opt/bpfprof#g" -e "s#@CONFDIR@#/etc/bpfprof#g" \
    "$REPO_DIR/systemd/bpfprof.service" >"$ROOT/lib/systemd/system/bpfprof.service"
install -m 0644 "$REPO_DIR/packaging/config.toml" "$ROOT/etc/bpfprof/config.toml"
install -m 0644 "$REPO_DIR/docs/agent.md" "$ROOT/opt/bpfprof/share/doc/agent.md"
install -D -m 0755 "$REPO_DIR/systemd/bpfprof-reload" "$ROOT/opt/bpfprof/libexec/bpfprof-reload"

cat >"$ROOT/DEBIAN/control" <<CONTROL
Package: bpfprof
Version: $VERSION
Architecture: $ARCH
Maintainer: bpfprof maintainers <maintainers@bpfprof.invalid>
Depends: python3 (>= 3.11), python3-venv, python3-bpfcc
Section: devel
Priority: optional
Description: eBPF continuous profiling agent
 Profiles every process on the host (CPU by default; off-CPU, locks and
 allocations on request) and sends the profiles to an OpenTelemetry
 collector over OTLP, or writes rolling pprof files.
CONTROL
echo /etc/bpfprof/config.toml >"$ROOT/DEBIAN/conffiles"

cat >"$ROOT/DEBIAN/postinst" <<'POSTINST'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
    rm -rf /opt/bpfprof/venv
    /usr/bin/python3 -m venv --system-site-packages /opt/bpfprof/venv
    /opt/bpfprof/venv/bin/pip install --quiet --no-index --disable-pip-version-check \
        --find-links /opt/bpfprof/wheels bpfprof
    install -d -m 0700 /var/lib/bpfprof
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload
        systemctl enable --now bpfprof.service || true
    fi
fi
POSTINST
cat >"$ROOT/DEBIAN/prerm" <<'PRERM'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
    systemctl disable --now bpfprof.service || true
fi
PRERM
cat >"$ROOT/DEBIAN/postrm" <<'POSTRM'
#!/bin/sh
set -e
rm -rf /opt/bpfprof/venv
if [ "$1" = purge ]; then
    rm -rf /var/lib/bpfprof /run/bpfprof
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi
POSTRM
chmod 0755 "$ROOT/DEBIAN/postinst" "$ROOT/DEBIAN/prerm" "$ROOT/DEBIAN/postrm"

mkdir -p "$OUT"
dpkg-deb --root-owner-group --build "$ROOT" "$OUT" >/dev/null
echo "==> $OUT/bpfprof_${VERSION}_${ARCH}.deb"
