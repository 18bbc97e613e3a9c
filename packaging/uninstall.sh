#!/usr/bin/env bash
# Removes what packaging/install.sh installed.
#
#   packaging/uninstall.sh [--destdir DIR] [--prefix /opt/bpfprof] [--purge]
#
# Keeps /etc/bpfprof (your config) and /var/lib/bpfprof (profiles, spool)
# unless --purge.
set -euo pipefail

DESTDIR=""
PREFIX=/opt/bpfprof
PURGE=0

while [[ $# -gt 0 ]]; do
    case "$1" in
    --destdir) DESTDIR="${2:?--destdir needs a directory}"; shift 2 ;;
    --prefix) PREFIX="${2:?--prefix needs a directory}"; shift 2 ;;
    --purge) PURGE=1; shift ;;
    -h | --help) sed -n '2,8p' "$0"; exit 0 ;;
    *) printf 'uninstall.sh: error: unknown option %s\n' "$1" >&2; exit 1 ;;
    esac
done

if [[ -z $DESTDIR && -d /run/systemd/system ]]; then
    systemctl disable --now bpfprof.service 2>/dev/null || true
fi
rm -f "$DESTDIR/etc/systemd/system/bpfprof.service"
[[ -z $DESTDIR && -d /run/systemd/system ]] && systemctl daemon-reload
rm -rf "$DESTDIR$PREFIX"
rm -rf "$DESTDIR/run/bpfprof"
if [[ $PURGE -eq 1 ]]; then
    rm -rf "$DESTDIR/etc/bpfprof" "$DESTDIR/var/lib/bpfprof"
fi
if [[ $PURGE -eq 1 ]]; then echo "==> bpfprof removed (config and state purged)"; else echo "==> bpfprof removed (kept /etc/bpfprof and /var/lib/bpfprof)"; fi
