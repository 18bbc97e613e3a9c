"""`bench/run.py realworld`: real Debian programs under bpfprof, perf and heaptrack.

Four programs from the host's packages, with inputs generated once per run
(each command takes about 5-15 s alone):

  xz       xz -9 -T1 -k -f of a 50 MiB text (a 64 KiB block of random words,
           repeated with a counter: dense enough to keep -9 at ~7 s)
  sqlite3  a 1M-row table (generate_series), a nested-loop join with the
           automatic index off and a GROUP BY over a sort of every row
  gcc      gcc -O2 -c of a generated C file (structs, switches, recursion);
           cc1 and as are children of the driver
  python3  /usr/bin/python3 on a pure-Python loop (string scoring, a dict)

Each repetition runs every program under
  (a) bpfprof record -F 99 -o X.pb.gz -- CMD
  (b) perf record -F 99 --call-graph dwarf -o X.data -- CMD
  (c) bpfprof record -t alloc -o X.pb.gz -- CMD
  (d) heaptrack -o X CMD (gcc: gcc -wrapper heaptrack, one file per child;
      heaptrack follows no children of its own)

and reports, per program:
  - the self share of the top functions (by the larger of the two shares)
    in bpfprof (leaf location's function; for python3 a Python leaf counts
    as _PyEval_EvalFrameDefault, the native frame it stands for) and in
    `perf report --stdio --no-children --sort sym -g none`, and their
    largest absolute difference in points;
  - the share of samples whose stack reaches a process root (ROOTS), in
    bpfprof and, for reference, in `perf script`;
  - the share of frames (sample-weighted) that have no name, in both;
  - python3: the share of samples holding a Python frame (Location.kind
    cpython) and the top Python functions by innermost Python frame;
  - alloc_space of bpfprof (an estimate from one sample per ~512 KiB) over
    heaptrack's total allocated bytes (the sum of its size histogram),
    and bpfprof's inuse_space at exit beside heaptrack's leaked and peak.
Ranges are min-max over the repetitions.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.cpu import commit, machine
from bench.trial import BenchError

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BPFPROF = str(REPO / ".venv" / "bin" / "bpfprof")
PYTHON = "/usr/bin/python3"  # Debian's CPython; `python3` on PATH may be another build
ROOTS = {"main", "_start", "__libc_start_call_main", "start_thread", "clone3"}
EVAL_LOOP = "_PyEval_EvalFrameDefault"
TOP = 10
SQL = """PRAGMA automatic_index=off;
SELECT count(*), sum(length(y.c)) FROM t x, t y
  WHERE x.a <= 1000 AND y.b = x.b AND y.c LIKE '%AB%';
SELECT count(*), max(s) FROM (SELECT substr(c, 1, 5) k, count(*), sum(b) s FROM t GROUP BY k);
"""
PY_LOOP = """
def score(words):
    total = 0
    for w in words:
        total += sum(ord(c) for c in w) % 97
    return total


def churn(n):
    d = {}
    for i in range(n):
        key = f"k{i % 5000}"
        d[key] = d.get(key, 0) + i * i % 13
    return len(d)


def main():
    words = [f"word{i}" for i in range(20000)]
    acc = 0
    for _ in range(200):
        acc += score(words) + churn(60000)
    print(acc)


main()
"""


def gen_text(path: Path, size: int = 50 << 20) -> None:
    import random

    r = random.Random(1)
    words = [
        "".join(r.choices("abcdefghijklmnopqrstuvwxyz", k=r.randint(2, 9))) for _ in range(500)
    ]
    block = "".join(" ".join(r.choices(words, k=10)) + "\n" for _ in range(2000)).encode()
    with path.open("wb") as f:
        n = i = 0
        while n < size:
            chunk = b"%09d\n" % i + block
            f.write(chunk)
            n, i = n + len(chunk), i + 1


def gen_c(path: Path, n: int = 700) -> None:
    parts = [f"int func{i}(int);" for i in range(n)]
    for i in range(n):
        parts.append(f"""
struct s{i} {{ int a[16]; double d; struct s{i} *next; }};
static int helper{i}(struct s{i} *p, int k) {{
    int acc = {i};
    for (int j = 0; j < 16; j++) {{
        switch ((p->a[j] + k) % 5) {{
        case 0: acc += p->a[j] * {i % 7 + 1}; break;
        case 1: acc ^= p->a[j] << {i % 5}; break;
        case 2: acc -= (int)(p->d * j); break;
        case 3: if (p->next) acc += helper{i}(p->next, k - 1); break;
        default: acc = acc * 31 + j;
        }}
    }}
    return acc;
}}
int func{i}(int x) {{
    struct s{i} v = {{ .d = x * 0.5 }};
    for (int j = 0; j < 16; j++) v.a[j] = x + j * {i};
    return helper{i}(&v, x) + (x > {i} ? func{max(i - 1, 0)}(x - 1) : 0);
}}""")
    path.write_text("\n".join(parts) + "\n")


def gen_db(path: Path) -> None:
    path.unlink(missing_ok=True)
    sql = (
        "CREATE TABLE t(a INTEGER PRIMARY KEY, b INTEGER, c TEXT);"
        "INSERT INTO t SELECT value, (value * 7919) % 1000, hex(randomblob(8))"
        " FROM generate_series(1, 1000000);"
    )
    subprocess.run(["sqlite3", str(path), sql], check=True)


@dataclass(frozen=True)
class Program:
    name: str
    setup: Callable[[Path], list[str]]  # generates inputs, returns the command
    heaptrack_wrapper: bool = False  # children are the work: trace them by gcc -wrapper


def _xz(w: Path) -> list[str]:
    gen_text(w / "data.txt")
    return ["xz", "-9", "-T1", "-k", "-f", str(w / "data.txt")]


def _sqlite(w: Path) -> list[str]:
    gen_db(w / "t.db")
    return ["sqlite3", str(w / "t.db"), SQL]


def _gcc(w: Path) -> list[str]:
    gen_c(w / "big.c")
    return ["gcc", "-O2", "-c", str(w / "big.c"), "-o", str(w / "big.o")]


def _python(w: Path) -> list[str]:
    (w / "loop.py").write_text(PY_LOOP)
    return [PYTHON, str(w / "loop.py")]


PROGRAMS = {
    "xz": Program("xz", _xz),
    "sqlite3": Program("sqlite3", _sqlite),
    "gcc": Program("gcc", _gcc, heaptrack_wrapper=True),
    "python3": Program("python3", _python),
}


def plain(name: str) -> str:
    """A function name as both tools can agree on it: no C++ parameter
    list, no symbol version (`__libc_start_main@@GLIBC_2.34`)."""
    name = name.split("@", 1)[0]
    if "(" in name and not name.startswith("("):
        name = name[: name.index("(")]
    return name.strip()


def unnamed(name: str) -> bool:
    return not name or name.startswith("0x") or name == "[unknown]" or "+0x" in name


@dataclass
class View:
    """One tool's CPU profile of one run, as stacks of names, leaf first."""

    self_share: dict[str, float] = field(default_factory=dict)
    reach: float = 0.0
    unnamed: float = 0.0
    samples: int = 0
    python: float | None = None  # share of samples with a Python frame
    py_self: dict[str, float] = field(default_factory=dict)


def leaf_key(name: str, dso: str = "") -> str:
    """A leaf's function, or `? BINARY` when it has no name: unnamed code
    is compared per binary, as pprof shows it."""
    if name.startswith("? "):
        return name
    return plain(name) if not unnamed(name) else f"? {Path(dso).name or '[unknown]'}"


def summarize(stacks: list[tuple[list[str], int]], leaf: list[str]) -> View:
    total = sum(c for _, c in stacks) or 1
    leaves: Counter[str] = Counter()
    for name, (_, c) in zip(leaf, stacks, strict=True):
        leaves[leaf_key(name)] += c
    frames = sum(len(s) * c for s, c in stacks) or 1
    return View(
        self_share={k: v / total for k, v in leaves.items()},
        reach=sum(c for s, c in stacks if any(plain(n) in ROOTS for n in s)) / total,
        unnamed=sum(sum(map(unnamed, s)) * c for s, c in stacks) / frames,
        samples=sum(c for _, c in stacks),
    )


def bpfprof_view(path: Path) -> View:
    from agent.exporters.pprof import decode
    from agent.model import CPYTHON

    profile = decode(path.read_bytes())
    idx = profile.sample_index("samples")
    stacks, leaf, py = [], [], Counter()
    with_py = 0
    for s in profile.samples:
        if not (v := s.values[idx]):
            continue
        names = [n for loc in s.locations for n in ([f.function for f in loc.frames] or [""])]
        stacks.append((names, v))
        first = s.locations[0] if s.locations else None
        if first is None:
            leaf.append("")
        elif first.kind == CPYTHON:
            leaf.append(EVAL_LOOP)  # the native view: the interpreter loop perf sees
        elif first.frames and not unnamed(first.frames[-1].function):
            leaf.append(first.frames[-1].function)
        else:
            leaf.append(leaf_key("", first.mapping.file if first.mapping else ""))
        inner = next((loc for loc in s.locations if loc.kind == CPYTHON), None)
        if inner is not None and inner.frames:
            with_py += v
            py[inner.frames[0].function] += v
    view = summarize(stacks, leaf)
    if with_py:
        view.python = with_py / (view.samples or 1)
        view.py_self = {k: c / view.samples for k, c in py.items()}
    return view


_PERF_ROW = re.compile(r"^\s+([\d.]+)%\s+(\S+)\s+\[(.)\]\s+(.*?)\s*$")


def perf_view(data: Path) -> View:
    """Self shares from `perf report`, reach and unnamed from `perf script`."""
    flat = ["--stdio", "--no-children", "--sort", "dso,sym", "-g", "none"]
    report = _run(["perf", "report", "-i", str(data), *flat])
    script = _run(["perf", "script", "-i", str(data), "-F", "comm,pid,tid,ip,sym"])
    stacks: list[tuple[list[str], int]] = []
    for block in script.split("\n\n"):
        lines = [ln.split(None, 1) for ln in block.splitlines()[1:] if ln.startswith("\t")]
        names = [p[1].split("+0x")[0] if len(p) > 1 else "" for p in lines]
        if block.strip():
            stacks.append((names, 1))
    view = summarize(stacks, [s[0] if s else "" for s, _ in stacks])
    shares: Counter[str] = Counter()
    for line in report.splitlines():
        if m := _PERF_ROW.match(line):
            shares[leaf_key(m.group(4), m.group(2))] += float(m.group(1)) / 100
    view.self_share = dict(shares)
    return view


def _run(argv: list[str], **kw: object) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    if done.returncode != 0:
        raise BenchError(f"{' '.join(argv[:4])} … exited {done.returncode}: {done.stderr[-400:]}")
    return str(done.stdout)


@dataclass
class Alloc:
    by_comm: dict[str, int]  # alloc_space bytes per process name
    inuse: int = 0
    peak: int = 0
    leaked: int = 0


def bpfprof_alloc(path: Path) -> Alloc:
    from agent.exporters.pprof import decode

    profile = decode(path.read_bytes())
    space, inuse = profile.sample_index("alloc_space"), profile.sample_index("inuse_space")
    by: Counter[str] = Counter()
    total_inuse = 0
    for s in profile.samples:
        by[s.labels.get("comm", "?")] += s.values[space]
        total_inuse += s.values[inuse]
    return Alloc(dict(by), inuse=total_inuse)


_SIZE = {"": 1, "B": 1, "K": 1e3, "M": 1e6, "G": 1e9}


def _bytes(text: str) -> int:
    m = re.match(r"([\d.]+)([KMG]?)", text.strip())
    return int(float(m.group(1)) * _SIZE[m.group(2)]) if m else 0


def heaptrack_alloc(files: list[Path], workdir: Path) -> Alloc:
    """Total allocated bytes per process from heaptrack_print's size
    histogram (every allocation's size, counted); peak and leaked from its
    summary lines (peaks summed over processes)."""
    by: Counter[str] = Counter()
    peak = leaked = 0
    for f in files:
        hist = workdir / "hist.txt"
        out = _run(
            ["heaptrack_print", "-f", str(f), "-H", str(hist), "-p", "0", "-a", "0", "-T", "0"]
        )
        comm = f.name.split(".")[1] if f.name.startswith("heaptrack.") else "main"
        for line in hist.read_text().splitlines():
            size, count = line.split()
            by[comm] += int(size) * int(count)
        for line in out.splitlines():
            if line.startswith("peak heap memory consumption:"):
                peak += _bytes(line.split(":", 1)[1])
            elif line.startswith("total memory leaked:"):
                leaked += _bytes(line.split(":", 1)[1])
    return Alloc(dict(by), peak=peak, leaked=leaked)


def timed(argv: list[str], cwd: Path) -> float:
    t = time.monotonic()
    _run(argv, cwd=cwd, stdin=subprocess.DEVNULL)
    return time.monotonic() - t


@dataclass
class Result:
    program: str
    bpf: list[View] = field(default_factory=list)
    perf: list[View] = field(default_factory=list)
    alloc: list[Alloc] = field(default_factory=list)
    heap: list[Alloc] = field(default_factory=list)
    secs: dict[str, list[float]] = field(default_factory=dict)


def run_program(prog: Program, cmd: list[str], w: Path, res: Result) -> None:
    def note(tool: str, s: float) -> None:
        res.secs.setdefault(tool, []).append(s)

    note("alone", timed(cmd, w))
    pb = w / "cpu.pb.gz"
    note("bpfprof", timed([BPFPROF, "record", "-F", "99", "-o", str(pb), "--", *cmd], w))
    res.bpf.append(bpfprof_view(pb))
    data = w / "perf.data"
    perf = ["perf", "record", "-q", "-F", "99", "--call-graph", "dwarf", "-o", str(data)]
    note("perf", timed([*perf, "--", *cmd], w))
    res.perf.append(perf_view(data))
    pb = w / "alloc.pb.gz"
    note("bpfprof alloc", timed([BPFPROF, "record", "-t", "alloc", "-o", str(pb), "--", *cmd], w))
    res.alloc.append(bpfprof_alloc(pb))
    hdir = w / "heaptrack"
    shutil.rmtree(hdir, ignore_errors=True)
    hdir.mkdir()
    if prog.heaptrack_wrapper:  # gcc: each child (cc1, as) under its own heaptrack
        note("heaptrack", timed([*cmd, "-wrapper", "heaptrack"], hdir))
    else:
        note("heaptrack", timed(["heaptrack", "-o", str(hdir / "main"), *cmd], hdir))
    res.heap.append(heaptrack_alloc(sorted(hdir.glob("*.zst")), w))


def span(values: list[float], fmt: str) -> str:
    lo, hi = min(values), max(values)
    return format(lo, fmt) if format(lo, fmt) == format(hi, fmt) else f"{lo:{fmt}}–{hi:{fmt}}"


def pct(values: list[float]) -> str:
    return span([v * 100 for v in values], ".1f") + " %"


def top_functions(res: Result) -> list[str]:
    both: Counter[str] = Counter()
    for v in [*res.bpf, *res.perf]:
        for k, s in v.self_share.items():
            both[k] = max(both[k], s)
    return [k for k, _ in both.most_common(TOP)]


def unnamed_leaf(v: View) -> float:
    return sum(s for k, s in v.self_share.items() if k.startswith("? "))


def report(res: Result) -> list[str]:
    rows = [f"#### {res.program}", "", "| function | bpfprof self | perf self |", "|---|---|---|"]
    funcs = top_functions(res)
    for f in funcs:
        b = [v.self_share.get(f, 0.0) for v in res.bpf]
        p = [v.self_share.get(f, 0.0) for v in res.perf]
        label = f"{f[2:]} (unnamed)" if f.startswith("? ") else f"`{f}`"
        rows.append(f"| {label} | {pct(b)} | {pct(p)} |")
    diffs = [  # per repetition: the largest difference over the top functions
        max(abs(b.self_share.get(f, 0.0) - p.self_share.get(f, 0.0)) for f in funcs)
        for b, p in zip(res.bpf, res.perf, strict=True)
    ]

    def row(label: str, get: Callable[[View], float]) -> str:
        return f"| {label} | {pct([get(v) for v in res.bpf])} | {pct([get(v) for v in res.perf])} |"

    rows += [
        row("unnamed leaf, all binaries", unnamed_leaf),
        f"| **max abs difference, top {len(funcs)}** | {span([d * 100 for d in diffs], '.1f')} "
        "points | |",
        f"| samples | {span([v.samples for v in res.bpf], 'd')} | "
        f"{span([v.samples for v in res.perf], 'd')} |",
        row("stack reaches a root", lambda v: v.reach),
        row("unnamed frames / all frames", lambda v: v.unnamed),
    ]
    if any(v.python for v in res.bpf):
        rows.append(
            f"| samples with a Python frame | {pct([v.python or 0.0 for v in res.bpf])} | – |"
        )
        py: Counter[str] = Counter()
        for v in res.bpf:
            py.update(v.py_self)
        for f, _ in py.most_common(5):
            share = [v.py_self.get(f, 0.0) for v in res.bpf]
            rows.append(f"| Python `{f}` (innermost) | {pct(share)} | – |")
    rows += ["", "| allocations | bpfprof alloc | heaptrack | ratio |", "|---|---|---|---|"]
    comms = sorted({c for h in res.heap for c in h.by_comm})
    for comm in comms:
        mb = [
            sum(a.by_comm.values()) if comm == "main" else a.by_comm.get(comm, 0) for a in res.alloc
        ]
        hb = [h.by_comm.get(comm, 0) for h in res.heap]
        ratio = [x / y for x, y in zip(mb, hb, strict=True) if y]
        who = "all processes" if comm == "main" else comm
        rows.append(
            f"| alloc_space, {who} (MB) | {span([x / 1e6 for x in mb], '.1f')} | "
            f"{span([y / 1e6 for y in hb], '.1f')} | {span(ratio, '.2f') if ratio else '–'} |"
        )
    rows += [
        "| bpfprof inuse_space at exit / heaptrack leaked (MB) | "
        f"{span([a.inuse / 1e6 for a in res.alloc], '.2f')} | "
        f"{span([h.leaked / 1e6 for h in res.heap], '.2f')} | |",
        f"| heaptrack peak heap (MB) | | {span([h.peak / 1e6 for h in res.heap], '.2f')} | |",
        "| seconds per command: "
        + ", ".join(f"{k} {span(v, '.1f')}" for k, v in res.secs.items())
        + " | | | |",
        "",
    ]
    return rows


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench/run.py realworld", description=__doc__)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--only", choices=list(PROGRAMS), action="append")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args(argv)
    for tool in ("perf", "heaptrack", "heaptrack_print", "xz", "sqlite3", "gcc"):
        if shutil.which(tool) is None:
            raise BenchError(f"{tool} is not installed (Debian package of that name)")
    chosen = [PROGRAMS[n] for n in (args.only or PROGRAMS)]
    results = {p.name: Result(p.name) for p in chosen}
    with tempfile.TemporaryDirectory(prefix="bpfprof-realworld-") as tmp:
        cmds = {}
        for p in chosen:
            w = Path(tmp) / p.name
            w.mkdir()
            cmds[p.name] = (w, p.setup(w))
        for rep in range(args.repeat):
            for p in chosen:
                w, cmd = cmds[p.name]
                print(f"realworld: {p.name} run {rep + 1}/{args.repeat}", file=sys.stderr)
                run_program(p, cmd, w, results[p.name])
    head = {"machine": machine(), "commit": commit(REPO), "repeat": args.repeat}
    print(json.dumps(head))
    for p in chosen:
        print(f"    {shlex.join(cmds[p.name][1])}".replace("\n", " "))
    print()
    for p in chosen:
        print("\n".join(report(results[p.name])))
    if args.json:
        args.json.write_text(
            json.dumps({**head, "results": {k: _plain(v) for k, v in results.items()}}, indent=1)
        )
    return 0


def _plain(res: Result) -> dict[str, object]:
    from dataclasses import asdict

    return asdict(res)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main(sys.argv[1:]))
