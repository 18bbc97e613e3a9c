#!/usr/bin/env bash
# Prepares a Debian/Ubuntu host to build, run and test bpfprof.
#
#   packaging/setup-host.sh          OS packages, kernel headers, tracefs, .venv
#   packaging/setup-host.sh --test   the same, plus the test tools and the [test] extra
#
# Idempotent: every step checks first and skips what is already done, so a
# second run takes about a second. Must run as root (it installs packages,
# writes /lib/modules and mounts filesystems). See docs/setup.md.
#
# The functions can also be sourced (`source packaging/setup-host.sh`) without
# running anything, which is how the header-linking logic is tested against a
# temporary directory tree.

set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV_DIR="$REPO_DIR/.venv"
SYSTEM_PYTHON=/usr/bin/python3
STAMP_FILE="$VENV_DIR/.bpfprof-setup-stamp"

BASE_PACKAGES=(python3-bpfcc python3-venv gcc make)
# go tool pprof, eu-addr2line, addr2line/readelf, llvm-symbolizer, profile-bpfcc,
# and headless chromium for the flame graph page's browser tests,
# systemd-analyze to verify the agent's unit, libc6-dbg (libc's DWARF)
# for the symbolizer benchmark, which follows the issue's method, and openssl
# (priority optional) for the throwaway CA of the OTLP TLS tests
TEST_PACKAGES=(golang-go elfutils binutils llvm bpfcc-tools chromium systemd libc6-dbg openssl)

APT_UPDATED=0

say() { printf '==> %s\n' "$*"; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }
die() {
    printf 'setup-host.sh: error: %s\n' "$*" >&2
    exit 1
}

require_root() {
    if [[ $EUID -ne 0 ]]; then
        die "must run as root (it installs packages and mounts tracefs): sudo make setup"
    fi
}

# --- OS packages -------------------------------------------------------------

is_installed() {
    [[ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" == installed ]]
}

# apt-get update costs seconds and needs the network: only run it once, and
# only when something is about to be installed.
apt_update_once() {
    if [[ $APT_UPDATED -eq 0 ]]; then
        say "apt-get update"
        apt-get update -qq
        APT_UPDATED=1
    fi
}

apt_install() {
    apt_update_once
    say "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" </dev/null
}

install_packages() {
    local missing=() pkg
    for pkg in "$@"; do
        is_installed "$pkg" || missing+=("$pkg")
    done
    if [[ ${#missing[@]} -eq 0 ]]; then
        say "packages: already installed: $*"
    else
        apt_install "${missing[@]}"
    fi
}

# --- kernel headers ----------------------------------------------------------
# BCC compiles its programs against /lib/modules/$(uname -r)/build (and
# .../source, where a distro splits generated and common headers). Without
# them it refuses to compile anything.

headers_release() {
    # The kernel release a headers tree was generated for, from its utsrelease.h.
    local build_dir=$1
    sed -n 's/^#define UTS_RELEASE "\(.*\)"$/\1/p' "$build_dir/include/generated/utsrelease.h" 2>/dev/null || true
}

# The distro kernel release that the generic headers meta-package (for example
# linux-headers-amd64) currently pulls in, e.g. "6.1.0-56-amd64".
meta_headers_release() {
    local meta=$1 dep
    dep=$(dpkg-query -W -f='${Depends}' "$meta" 2>/dev/null) || return 1
    dep=${dep%%[ ,]*}
    [[ $dep == linux-headers-* ]] || return 1
    printf '%s\n' "${dep#linux-headers-}"
}

# The newest release under ROOT/lib/modules, other than EXCLUDE, whose build
# link leads to a headers tree. Used when the meta-package cannot tell.
newest_headers_release() {
    local root=$1 exclude=$2 dir rel
    for dir in "$root"/lib/modules/*/; do
        rel=$(basename "$dir")
        if [[ $rel != "$exclude" && -d "$dir/build/include" ]]; then
            printf '%s\n' "$rel"
        fi
    done | sort -V | tail -n 1
}

# Links ROOT/lib/modules/RELEASE/{build,source} to whatever the distro's own
# ROOT/lib/modules/DISTRO_RELEASE/{build,source} links point to. The link
# targets are copied verbatim: absolute targets (Debian's) name the same
# trees, and relative ones stay correct because both directories sit at the
# same depth.
link_fallback_headers() {
    local release=$1 distro_release=$2 root=${3:-}
    local src_dir="$root/lib/modules/$distro_release" dst_dir="$root/lib/modules/$release"
    local name target
    [[ -e "$src_dir/build" ]] || die "no headers tree at $src_dir/build"
    mkdir -p "$dst_dir"
    for name in build source; do
        [[ -L "$src_dir/$name" ]] || continue
        target=$(readlink "$src_dir/$name")
        ln -sfn "$target" "$dst_dir/$name"
        say "linked $dst_dir/$name -> $target"
    done
}

fallback_warning() {
    local release=$1 headers=$2
    warn "no headers for the running kernel $release; using the distro's $headers headers as a fallback."
    warn "Their struct layouts do not match the running kernel. BCC compiles with them, and bpfprof"
    warn "reads no kernel struct through them (helpers and tracepoint formats only), so this is safe"
    warn "for bpfprof; do not use these headers for programs that dereference kernel structs."
}

# linux-headers-amd64 on Debian, linux-headers-generic on Ubuntu.
generic_headers_package() {
    local candidate
    for candidate in "linux-headers-$(dpkg --print-architecture)" linux-headers-generic; do
        if is_installed "$candidate" || apt-cache show "$candidate" >/dev/null 2>&1; then
            printf '%s\n' "$candidate"
            return 0
        fi
    done
    return 1
}

setup_kernel_headers() {
    local release meta distro_release have
    release=$(uname -r)
    if [[ -d "/lib/modules/$release/build/include" ]]; then
        have=$(headers_release "/lib/modules/$release/build")
        if [[ -n $have && $have != "$release" ]]; then
            say "kernel headers: /lib/modules/$release/build holds $have headers (fallback)"
            # A build link made by hand without its source link: complete the pair.
            if [[ ! -e "/lib/modules/$release/source" && -L "/lib/modules/$have/source" ]]; then
                link_fallback_headers "$release" "$have"
            fi
            fallback_warning "$release" "$have"
        else
            say "kernel headers: present for $release"
        fi
        return 0
    fi

    apt_update_once
    if apt-cache show "linux-headers-$release" >/dev/null 2>&1; then
        apt_install "linux-headers-$release"
        return 0
    fi

    say "kernel headers: the distro has no linux-headers-$release; installing its generic headers"
    meta=$(generic_headers_package) || die "found neither linux-headers-$(dpkg --print-architecture) nor linux-headers-generic"
    is_installed "$meta" || apt_install "$meta"
    distro_release=$(meta_headers_release "$meta") || distro_release=$(newest_headers_release "" "$release")
    [[ -n $distro_release ]] || die "installed $meta but found no headers tree under /lib/modules"
    link_fallback_headers "$release" "$distro_release"
    fallback_warning "$release" "$distro_release"
}

# --- tracefs and debugfs -----------------------------------------------------
# Not mounted at boot on these hosts; tracepoint programs need tracefs (BCC
# reads the event formats and ids there).

is_mounted() {
    local fstype=$1 mountpoint=$2
    awk -v t="$fstype" -v m="$mountpoint" '$2 == m && $3 == t { found = 1 } END { exit !found }' /proc/self/mounts
}

mount_fs() {
    local fstype=$1 mountpoint=$2
    if is_mounted "$fstype" "$mountpoint"; then
        say "$fstype: already mounted at $mountpoint"
        return 0
    fi
    say "mount -t $fstype $fstype $mountpoint"
    mount -t "$fstype" "$fstype" "$mountpoint" || die "cannot mount $fstype at $mountpoint"
}

# --- virtualenv --------------------------------------------------------------
# Debian's python3-bpfcc installs `bcc` for /usr/bin/python3 only (the `bcc`
# on PyPI is an unrelated package), so the venv must be made by that
# interpreter and see its system site-packages.

venv_is_usable() {
    local cfg="$VENV_DIR/pyvenv.cfg"
    [[ -x "$VENV_DIR/bin/python" ]] &&
        grep -qx 'include-system-site-packages = true' "$cfg" 2>/dev/null &&
        grep -qx "home = $(dirname "$(readlink -f "$SYSTEM_PYTHON")")" "$cfg" 2>/dev/null
}

setup_venv() {
    if venv_is_usable; then
        say "virtualenv: $VENV_DIR exists"
        return 0
    fi
    if [[ -e $VENV_DIR ]]; then
        say "virtualenv: $VENV_DIR was not made by $SYSTEM_PYTHON with system site-packages; recreating it"
        rm -rf "$VENV_DIR"
    fi
    say "$SYSTEM_PYTHON -m venv --system-site-packages $VENV_DIR"
    "$SYSTEM_PYTHON" -m venv --system-site-packages "$VENV_DIR"
}

# The stamp records the hash of pyproject.toml and the extra installed, so pip
# runs again only when the dependencies change. A test install covers a plain one.
pip_install() {
    local extra=$1 spec=. hash
    hash=$(sha256sum "$REPO_DIR/pyproject.toml" | cut -d' ' -f1)
    if [[ -f $STAMP_FILE && -x "$VENV_DIR/bin/bpfprof" ]]; then
        local old_hash old_extra
        read -r old_hash old_extra <"$STAMP_FILE" || true
        if [[ $old_hash == "$hash" && (-z $extra || $old_extra == "$extra") ]]; then
            say "pip: bpfprof${extra:+[$extra]} already installed for this pyproject.toml"
            return 0
        fi
    fi
    [[ -n $extra ]] && spec=".[$extra]"
    say "pip install -e '$spec'"
    (cd "$REPO_DIR" && "$VENV_DIR/bin/pip" install --quiet --disable-pip-version-check -e "$spec")
    printf '%s %s\n' "$hash" "$extra" >"$STAMP_FILE"
}

check_bcc() {
    if "$VENV_DIR/bin/python" -c 'import bcc; bcc.BPF' >/dev/null 2>&1; then
        say "bcc: importable from $VENV_DIR/bin/python"
        return 0
    fi
    die "$VENV_DIR/bin/python cannot import bcc. It comes from python3-bpfcc, which serves only $SYSTEM_PYTHON: recreate the venv (rm -rf .venv && make setup), and make sure the PyPI package named bcc is not installed in it"
}

usage() {
    sed -n '2,10s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

main() {
    local with_test=0
    while [[ $# -gt 0 ]]; do
        case $1 in
            --test) with_test=1 ;;
            -h | --help) usage; return 0 ;;
            *) die "unknown option: $1 (see --help)" ;;
        esac
        shift
    done

    require_root
    install_packages "${BASE_PACKAGES[@]}"
    if [[ $with_test -eq 1 ]]; then install_packages "${TEST_PACKAGES[@]}"; fi
    setup_kernel_headers
    mount_fs tracefs /sys/kernel/tracing
    mount_fs debugfs /sys/kernel/debug
    setup_venv
    if [[ $with_test -eq 1 ]]; then pip_install test; else pip_install ""; fi
    check_bcc
    say "setup done"
}

# `return` only succeeds in a sourced file: run main only when executed.
if ! (return 0 2>/dev/null); then
    main "$@"
fi
