"""Real CPython 3.13 and 3.14 from Debian's packages, in chroot roots, for tests.

bpfprof reads Python frames of CPython 3.8-3.14, but the host's python3 is
Debian 12's 3.11. Other versions come from Debian's own packages: 3.13 from
trixie, 3.14 from sid, each root built from one suite only, so its libc is
the one that interpreter was built against. The packages come through
`apt-get download` with a private state directory (lists, cache, sources),
so the host's apt state is never touched; the mirror is the one the host's
apt sources already use, the signatures are checked against the host's
archive keyring (which knows the keys trixie and sid are signed with).

A root is the packages' files unpacked with `dpkg-deb -x` into one directory,
plus the merged-/usr links, and runs as `chroot ROOT /usr/bin/python3.X`.
It is built once into CACHE: in a temporary directory beside it, checked
(the interpreter must start and import threading), then renamed into place,
so an interrupted build never leaves half a root; a file lock keeps two
pytest processes from building at once. Tests run these binaries as root,
so the cache must belong to root and be writable by nobody else.

    python -m tests.pyroots 3.13 3.14   # build (or find) the roots ahead of the tests
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

SUITES = {"3.13": "trixie", "3.14": "sid"}  # trixie is 3.13's home; sid also has it
PACKAGES = (
    "python{v}-minimal",
    "libpython{v}-minimal",
    "libc6",
    "libexpat1",
    "zlib1g",
    "libgcc-s1",
)
CACHE = Path("/var/cache/bpfprof-tests/pyroots")
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
MANIFEST = "etc/bpfprof-pyroot-packages"  # "package version" lines, inside the root
SMOKE = "import os, sys, time, threading; print('%d.%d' % sys.version_info[:2])"
APT_TIMEOUT = 900  # seconds for one apt-get run; apt's own timeouts come first
TAIL = 3  # stderr lines an error message quotes

RootFactory = Callable[[str], Path]  # what the python_root fixture gives a test


class PyRootError(Exception):
    """A root could not be built: which step failed, and what it said."""


def root_for(version: str, cache: Path = CACHE, mirror: str | None = None) -> Path:
    """The root of CPython `version` ("3.13"), built into `cache` on first use."""
    final = cache / f"{suite_for(version)}-{version}"
    if _interpreter(final, version).is_file():
        return final
    _private_dir(cache)
    with _locked(cache / ".lock"):
        if not _interpreter(final, version).is_file():  # another process may have built it
            _build(version, final, mirror or host_mirror())
    return final


def python_in(root: Path, version: str) -> list[str]:
    """The argv prefix that runs a script with the root's interpreter."""
    return ["chroot", str(root), f"/usr/bin/python{version}"]


def install_script(root: Path, text: str) -> str:
    """Write `text` to a new file in the root's /tmp; its path inside the root."""
    fd, path = tempfile.mkstemp(suffix=".py", prefix="bpfprof-test-", dir=root / "tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o644)
    return "/tmp/" + os.path.basename(path)


def packages(root: Path) -> dict[str, str]:
    """Package name → version of what the root was unpacked from."""
    lines = (root / MANIFEST).read_text().splitlines()
    return dict(line.split(" ", 1) for line in lines)


def suite_for(version: str) -> str:
    if version not in SUITES:
        raise PyRootError(f"no Debian suite known for Python {version} (known: {sorted(SUITES)})")
    return SUITES[version]


def mirrors_in(text: str) -> list[str]:
    """Debian archive URIs (path ending in /debian) of the binary sources of an
    apt sources text, deb822 or one-line form, in order: not debian-security,
    nor a third party's repository (nodesource's suite "nodistro")."""
    found = []
    for stanza in re.split(r"\n\s*\n", text):
        fields = dict(re.findall(r"^(Types|URIs):[ \t]*(.+)$", stanza, re.MULTILINE))
        if "deb" in fields.get("Types", "").split():
            found += fields.get("URIs", "").split()
    found += re.findall(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)", text, re.MULTILINE)
    return [uri for uri in found if uri.rstrip("/").endswith("/debian")]


def host_mirror(etc: Path = Path("/etc/apt")) -> str:
    """The first archive mirror in the host's apt sources."""
    paths = [etc / "sources.list", *sorted(etc.glob("sources.list.d/*.sources"))]
    paths += sorted(etc.glob("sources.list.d/*.list"))
    for path in paths:
        if path.is_file() and (found := mirrors_in(path.read_text())):
            return found[0]
    raise PyRootError(f"no Debian archive mirror in {etc}/sources.list or sources.list.d")


def _interpreter(root: Path, version: str) -> Path:
    return root / "usr" / "bin" / f"python{version}"


def _private_dir(path: Path) -> None:
    """Create `path` (and its parent) 0700; refuse one that someone else could
    write, since the tests run the binaries found there as root."""
    for d in (path.parent, path):
        d.mkdir(mode=0o700, exist_ok=True)
        st = d.lstat()
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
            raise PyRootError(
                f"{d} must be a directory owned by uid {os.geteuid()}, not group/other-writable"
            )


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _build(version: str, final: Path, mirror: str) -> None:
    """Download, unpack, check, rename: the one place a root comes into being."""
    suite, started = suite_for(version), time.monotonic()
    for stale in final.parent.glob(f".build-{final.name}-*"):  # an interrupted build's
        shutil.rmtree(stale)
    work = Path(tempfile.mkdtemp(prefix=f".build-{final.name}-", dir=final.parent))
    try:
        _progress(f"building {final.name} from {mirror} {suite}")
        debs = _download(work, suite, mirror, [p.format(v=version) for p in PACKAGES])
        root = _unpack(work / "root", debs)
        _check(root, version)
        os.rename(root, final)
    finally:
        shutil.rmtree(work)
    _progress(f"{final.name} ready in {time.monotonic() - started:.1f} s: {final}")


def _download(work: Path, suite: str, mirror: str, names: list[str]) -> list[Path]:
    for d in ("lists/partial", "cache/archives/partial", "sources.list.d", "debs"):
        (work / d).mkdir(parents=True)
    (work / "sources.list").write_text(f"deb [signed-by={KEYRING}] {mirror} {suite} main\n")
    options = [
        *("-o", f"Dir::State::Lists={work}/lists", "-o", f"Dir::Cache={work}/cache"),
        *("-o", f"Dir::Etc::SourceList={work}/sources.list"),
        *("-o", f"Dir::Etc::SourceParts={work}/sources.list.d"),
        *("-o", f"Dir::Etc::Preferences={work}/preferences"),
        *("-o", f"Dir::Etc::PreferencesParts={work}/sources.list.d"),
        *("-o", "Dir::State::status=/dev/null", "-o", "APT::Sandbox::User=root"),
    ]
    update = ["apt-get", *options, "--error-on=any", "update"]
    _run(update, f"apt-get update of {mirror} {suite}", show=True)
    _progress(f"downloading {' '.join(names)}")
    download = ["apt-get", *options, "download", *names]
    _run(download, f"apt-get download from {suite}", work / "debs", show=True)
    return sorted((work / "debs").glob("*.deb"))


def _unpack(root: Path, debs: list[Path]) -> Path:
    """Every package's files in one tree, the merged-/usr links, an empty /tmp,
    and the manifest of what went in."""
    manifest = []
    for deb in debs:
        _run(["dpkg-deb", "-x", str(deb), str(root)], f"dpkg-deb -x {deb.name}")
        fields = _run(["dpkg-deb", "-f", str(deb), "Package", "Version"], f"dpkg-deb -f {deb.name}")
        manifest.append(" ".join(line.split(": ", 1)[1] for line in fields.splitlines()))
    for name in ("lib", "lib64", "bin", "sbin"):
        (root / "usr" / name).mkdir(parents=True, exist_ok=True)
        if not (root / name).exists():
            (root / name).symlink_to(f"usr/{name}")
    (root / "tmp").mkdir(mode=0o1777, exist_ok=True)
    os.chmod(root / "tmp", 0o1777)
    (root / MANIFEST).write_text("".join(f"{line}\n" for line in sorted(manifest)))
    return root


def _check(root: Path, version: str) -> None:
    """The root is only kept if its interpreter starts and imports threading."""
    said = _run([*python_in(root, version), "-c", SMOKE], f"python{version} in {root}").strip()
    if said != version:
        raise PyRootError(f"python{version} in {root} says it is {said!r}")


def _run(cmd: list[str], what: str, cwd: Path | None = None, show: bool = False) -> str:
    """Run a build step; its stdout (shown on our stderr as it comes if `show`:
    apt's progress lines), or PyRootError quoting its stderr's tail."""
    out = 2 if show else subprocess.PIPE
    try:
        done = subprocess.run(
            cmd, cwd=cwd, stdout=out, stderr=subprocess.PIPE, text=True, timeout=APT_TIMEOUT
        )
    except subprocess.TimeoutExpired:
        raise PyRootError(f"{what}: no answer in {APT_TIMEOUT} s") from None
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-TAIL:])
        raise PyRootError(f"{what} failed (exit {done.returncode}): {tail}")
    return done.stdout or ""


def _progress(line: str) -> None:
    print(f"pyroots: {line}", file=sys.stderr, flush=True)


def main(versions: list[str]) -> int:
    """Build (or find) each root; print its path, size and packages."""
    for version in versions:
        root = root_for(version)
        size = sum(p.lstat().st_size for p in root.rglob("*"))
        print(f"{version}\t{root}\t{size / 2**20:.1f} MiB\t{packages(root)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or sorted(SUITES)))
