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

# The wheels are built by Debian 12's python3 (3.11), and some are CPython
# 3.11 builds only (grpcio, zstandard: cp311-cp311): the package works with
# that Python alone, so it says so. Other releases: packaging/install.sh.
cat >"$ROOT/DEBIAN/control" <<CONTROL
Package: bpfprof
Version: $VERSION
Architecture: $ARCH
Maintainer: bpfprof maintainers <maintainers@bpfprof.invalid>
Depends: python3 (>= 3.11), python3 (<< 3.12), python3-venv, python3-bpfcc
Section: devel
Priority: optional
Description: eBPF continuous profiling agent
 Profiles every process on the host (CPU by default; off-CPU, locks and
 allocations on request) and sends the profiles to an OpenTelemetry
 collector over OTLP, or writes rolling pprof files.
 .
 Built for Debian 12 (bookworm, Python 3.11).
CONTROL
echo /etc/bpfprof/config.toml >"$ROOT/DEBIAN/conffiles"

DOC="$ROOT/usr/share/doc/bpfprof"
install -d "$DOC" "$ROOT/usr/share/lintian/overrides"
cat >"$DOC/copyright" <<COPYRIGHT
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: bpfprof
Source: bpfprof source tree

Files: *
Copyright: 2025-2026 bpfprof authors
License: Apache-2.0

Files: opt/bpfprof/wheels/*
Copyright: the authors of each bundled Python package
License: various
 Each wheel carries its own license in its .dist-info directory.

License: Apache-2.0
 On Debian systems the full text is in /usr/share/common-licenses/Apache-2.0.
COPYRIGHT
# a native package's changelog, Debian's format, gzipped reproducibly
printf 'bpfprof (%s) unstable; urgency=medium\n\n  * Built from the bpfprof source tree.\n\n -- %s  %s\n' \
    "$VERSION" "bpfprof maintainers <maintainers@bpfprof.invalid>" \
    "$(date -R -u -d "@${SOURCE_DATE_EPOCH:-$(git -C "$REPO_DIR" log -1 --format=%ct 2>/dev/null || date +%s)}")" |
    gzip -9n >"$DOC/changelog.gz"
chmod 0644 "$DOC/copyright" "$DOC/changelog.gz"
# /opt is the layout install.sh shares (PREFIX, the unit's paths): an add-on package
printf 'bpfprof: dir-or-file-in-opt *\n' >"$ROOT/usr/share/lintian/overrides/bpfprof"

# The service follows deb-systemd-helper's rules, as debhelper writes them:
# enabled and started on the first install only; on upgrade, restarted only
# if it is running, and never enabled again once the admin disabled it.
cat >"$ROOT/DEBIAN/postinst" <<'POSTINST'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
    rm -rf /opt/bpfprof/venv
    python3 -m venv --system-site-packages /opt/bpfprof/venv
    /opt/bpfprof/venv/bin/pip install --quiet --no-index --disable-pip-version-check \
        --find-links /opt/bpfprof/wheels bpfprof
    install -d -m 0700 /var/lib/bpfprof
fi
if [ "$1" = configure ] || [ "$1" = abort-upgrade ] || [ "$1" = abort-deconfigure ] ||
    [ "$1" = abort-remove ]; then
    # removes only the mask deb-systemd-helper made when the package was removed
    deb-systemd-helper unmask bpfprof.service >/dev/null || true
    # was-enabled is true on a first install, and false once the admin disabled it
    if deb-systemd-helper --quiet was-enabled bpfprof.service; then
        deb-systemd-helper enable bpfprof.service >/dev/null || true
    else
        deb-systemd-helper update-state bpfprof.service >/dev/null || true
    fi
    if [ -d /run/systemd/system ]; then
        systemctl --system daemon-reload >/dev/null || true
        if [ -n "$2" ]; then
            deb-systemd-invoke try-restart bpfprof.service >/dev/null || true
        else
            deb-systemd-invoke start bpfprof.service >/dev/null || true
        fi
    fi
fi
POSTINST
cat >"$ROOT/DEBIAN/prerm" <<'PRERM'
#!/bin/sh
set -e
# on upgrade the service keeps running: postinst try-restarts it
if [ -d /run/systemd/system ] && [ "$1" = remove ]; then
    deb-systemd-invoke stop bpfprof.service >/dev/null || true
fi
PRERM
cat >"$ROOT/DEBIAN/postrm" <<'POSTRM'
#!/bin/sh
set -e
rm -rf /opt/bpfprof/venv
if [ "$1" = remove ]; then
    deb-systemd-helper mask bpfprof.service >/dev/null || true
fi
if [ "$1" = purge ]; then
    deb-systemd-helper purge bpfprof.service >/dev/null || true
    deb-systemd-helper unmask bpfprof.service >/dev/null || true
    rm -rf /var/lib/bpfprof /run/bpfprof
fi
if [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null || true
fi
POSTRM
chmod 0755 "$ROOT/DEBIAN/postinst" "$ROOT/DEBIAN/prerm" "$ROOT/DEBIAN/postrm"

mkdir -p "$OUT"
dpkg-deb --root-owner-group --build "$ROOT" "$OUT" >/dev/null
echo "==> $OUT/bpfprof_${VERSION}_${ARCH}.deb"
