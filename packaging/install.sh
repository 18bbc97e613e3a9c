#!/usr/bin/env bash
# Installs the bpfprof agent as a systemd service.
#
#   packaging/install.sh [--destdir DIR] [--prefix /opt/bpfprof] [--wheelhouse DIR]
#                        [--no-deps] [--no-enable]
#
# Layout (DESTDIR prepended to each):
#   PREFIX/venv                  a virtualenv made with Debian's python3 and
#                                --system-site-packages, so it imports BCC
#   PREFIX/share/doc/agent.md    the agent's documentation
#   PREFIX/libexec/bpfprof-reload  the unit's ExecReload (fails on a rejected config)
#   /etc/bpfprof/config.toml     the annotated default config (kept if present)
#   /etc/systemd/system/bpfprof.service
#   /var/lib/bpfprof             profiles and spool (systemd's StateDirectory)
#
# With --destdir (a staging root, for tests and packages) nothing outside DIR
# is touched: no OS packages, no systemctl. The venv's scripts then name their
# staged path, so it runs from there; packages build the venv at install time.
# --wheelhouse installs bpfprof and its dependencies from local wheels only.
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DESTDIR=""
PREFIX=/opt/bpfprof
CONFDIR=/etc/bpfprof
UNITDIR=/etc/systemd/system
STATEDIR=/var/lib/bpfprof
WHEELHOUSE=""
DEPS=1
ENABLE=1
SYSTEM_PYTHON=/usr/bin/python3

say() { printf '==> %s\n' "$*"; }
die() {
    printf 'install.sh: error: %s\n' "$*" >&2
    exit 1
}

parse_args() {
    while [[ $# -gt 0 ]]; do
        case "$1" in
        --destdir) DESTDIR="${2:?--destdir needs a directory}"; shift 2 ;;
        --prefix) PREFIX="${2:?--prefix needs a directory}"; shift 2 ;;
        --wheelhouse) WHEELHOUSE="${2:?--wheelhouse needs a directory}"; shift 2 ;;
        --no-deps) DEPS=0; shift ;;
        --no-enable) ENABLE=0; shift ;;
        -h | --help) sed -n '2,20p' "$0"; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
        esac
    done
    if [[ -n $DESTDIR ]]; then
        DESTDIR="$(mkdir -p "$DESTDIR" && cd "$DESTDIR" && pwd)"
        DEPS=0
        ENABLE=0
    elif [[ $EUID -ne 0 ]]; then
        die "must run as root to install system-wide (or give --destdir)"
    fi
}

install_os_packages() {
    [[ $DEPS -eq 1 ]] || return 0
    local missing=() pkg
    for pkg in python3-bpfcc python3-venv; do
        dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null | grep -qx installed ||
            missing+=("$pkg")
    done
    if [[ ${#missing[@]} -gt 0 ]]; then
        say "apt-get install ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${missing[@]}" </dev/null
    fi
}

make_venv() {
    local venv="$DESTDIR$PREFIX/venv"
    [[ -x $SYSTEM_PYTHON ]] || die "$SYSTEM_PYTHON not found (BCC is a module for Debian's python3)"
    say "virtualenv $venv"
    "$SYSTEM_PYTHON" -m venv --system-site-packages "$venv"
    local pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
    if [[ -n $WHEELHOUSE ]]; then
        "${pip[@]}" --no-index --find-links "$WHEELHOUSE" bpfprof
    else
        "${pip[@]}" "$REPO_DIR"
    fi
    "$venv/bin/python" -c 'import agent.daemon.runner' || die "the installed agent does not import"
}

install_files() {
    say "unit, config and documentation"
    install -d "$DESTDIR$UNITDIR" "$DESTDIR$CONFDIR" "$DESTDIR$PREFIX/share/doc" \
        "$DESTDIR$PREFIX/libexec"
    install -m 0755 "$REPO_DIR/systemd/bpfprof-reload" "$DESTDIR$PREFIX/libexec/bpfprof-reload"
    install -d -m 0700 "$DESTDIR$STATEDIR" # profiles: root's alone (an older 0750/0755 is tightened)
    sed -e "s#@PREFIX@#$PREFIX#g" -e "s#@CONFDIR@#$CONFDIR#g" \
        "$REPO_DIR/systemd/bpfprof.service" >"$DESTDIR$UNITDIR/bpfprof.service"
    chmod 0644 "$DESTDIR$UNITDIR/bpfprof.service"
    if [[ -e $DESTDIR$CONFDIR/config.toml ]]; then
        say "keeping the existing $CONFDIR/config.toml"
    else
        install -m 0644 "$REPO_DIR/packaging/config.toml" "$DESTDIR$CONFDIR/config.toml"
    fi
    install -m 0644 "$REPO_DIR/docs/agent.md" "$DESTDIR$PREFIX/share/doc/agent.md"
}

enable_service() {
    [[ $ENABLE -eq 1 ]] || return 0
    if [[ -d /run/systemd/system ]]; then
        say "systemctl enable --now bpfprof"
        systemctl daemon-reload
        systemctl enable --now bpfprof.service
    else
        say "systemd is not running here: start the agent with $PREFIX/venv/bin/bpfprof run"
    fi
}

main() {
    parse_args "$@"
    install_os_packages
    make_venv
    install_files
    enable_service
    say "installed; status: $PREFIX/venv/bin/bpfprof status"
}

main "$@"
