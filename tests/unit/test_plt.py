"""PLT stubs are named `name@plt` exactly where `objdump -d` labels them,
on programs built here in each layout ld emits on x86_64: the lazy `.plt`,
`-z now`, the IBT layout (`.plt.sec`, `-z ibtplt`), `.plt.got`, a shared
library, and a stripped executable (what distributions ship)."""

from __future__ import annotations

import platform
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from symbolizer.budget import Budget, BudgetExceeded
from symbolizer.elf import function_candidates, load_elf, open_elf

pytestmark = [
    pytest.mark.skipif(platform.machine() != "x86_64", reason="PLT stubs are decoded on x86_64"),
    pytest.mark.skipif(
        shutil.which("gcc") is None or shutil.which("objdump") is None,
        reason="needs gcc and objdump",
    ),
]

# calls four libc functions through the PLT; __cxa_finalize goes through .plt.got
SOURCE = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
int run(int argc, char **argv) {
    char *a = malloc(64);
    memset(a, argc, 64);
    int r = memcmp(a, argv[0], 4);
    printf("%d %zu\n", r, strlen(argv[0]));
    free(a);
    return 0;
}
"""
MAIN = "int run(int, char **);\nint main(int c, char **v) { return run(c, v); }\n"

LAYOUTS = {
    "lazy": ["-O1"],
    "now": ["-O1", "-Wl,-z,now"],
    "ibt": ["-O1", "-fcf-protection=full", "-Wl,-z,ibtplt"],
    "shared": ["-O1", "-fPIC", "-shared"],
    "stripped": ["-O1", "-s"],
}
LABEL = re.compile(r"^([0-9a-f]+) <([^>+-]+@plt)>:$")


def build(tmp: Path, layout: str) -> Path:
    src = tmp / "plt.c"
    src.write_text(SOURCE + ("" if layout == "shared" else MAIN))
    out = tmp / f"plt_{layout}"
    subprocess.run(["gcc", *LAYOUTS[layout], str(src), "-o", str(out)], check=True)
    return out


def objdump_stubs(path: Path) -> dict[int, str]:
    """Start → label of each `name@plt` stub objdump names (not `x@plt-0x10`)."""
    text = subprocess.run(
        ["objdump", "-d", str(path)], check=True, capture_output=True, text=True
    ).stdout
    return {int(m[1], 16): m[2] for m in map(LABEL.match, text.splitlines()) if m}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_stub_addresses_are_named_as_objdump_labels_them(tmp_path: Path, layout: str) -> None:
    # GIVEN a program built in this layout, and objdump's stub labels
    path = build(tmp_path, layout)
    stubs = objdump_stubs(path)
    assert {"memcmp@plt", "malloc@plt", "strlen@plt", "free@plt"} <= set(stubs.values())
    # WHEN its symbol table is loaded
    table = load_elf(path)
    # THEN every byte of every stub is named as objdump labels it
    starts = sorted(stubs)
    for i, start in enumerate(starts):
        size = 8 if i + 1 == len(starts) else min(16, starts[i + 1] - start)
        for address in (start, start + size // 2, start + size - 1):
            found = table.lookup(address)
            assert found is not None and found.name == stubs[start], (layout, hex(address))


def test_plt_header_and_ibt_lazy_entries_stay_unnamed(tmp_path: Path) -> None:
    """PLT0 (lazy binding's trampoline) and, in the IBT layout, `.plt`'s
    endbr/push/jmp entries have no `name@plt` label in objdump either."""
    for layout in ("lazy", "ibt"):
        path = build(tmp_path, layout)
        with open(path, "rb") as f:
            plt = open_elf(f).section(".plt")
        assert plt is not None
        table = load_elf(path)
        named = objdump_stubs(path)
        first_stub = 16 if layout == "lazy" else plt.header.size
        for address in range(plt.header.addr, plt.header.addr + first_stub, 4):
            assert address not in named
            assert table.lookup(address) is None, (layout, hex(address))


def test_stubs_are_paid_for_by_the_files_budget(tmp_path: Path) -> None:
    path = build(tmp_path, "lazy")
    with open(path, "rb") as f:
        budget = Budget()
        names = [c.name for c in function_candidates(open_elf(f, budget), budget)]
        assert "memcmp@plt" in names
        with pytest.raises(BudgetExceeded):
            tight = Budget(max_entries=len(names) - 1)
            function_candidates(open_elf(f, tight), tight)
