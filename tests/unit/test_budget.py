"""The per-file budget and the bounded LEB128 decoder (symbolizer/budget.py, dwarf_forms)."""

from __future__ import annotations

import io

import pytest

from agent.unwind.ehframe import CfiError, sleb128, uleb128
from symbolizer import budget as budget_module
from symbolizer.budget import Budget, BudgetExceeded, ElfError, cancel_all
from symbolizer.dwarf_forms import LebError, sleb, uleb
from symbolizer.sections import SHF_COMPRESSED, SectionHeader, read_section
from tests.elfcraft import zlib_bomb


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_bytes_are_refused_before_they_are_spent() -> None:
    budget = Budget(max_bytes=100)
    budget.take_bytes(60, "a")
    with pytest.raises(BudgetExceeded, match="b: 41 bytes would pass the file's budget of 100"):
        budget.take_bytes(41, "b")
    assert budget.used_bytes == 60 and budget.bytes_left == 40
    assert issubclass(BudgetExceeded, ElfError)


def test_entries_and_time_run_out_naming_what() -> None:
    clock = FakeClock()
    budget = Budget(max_entries=10, max_seconds=2.0, clock=clock)
    budget.take_entries(10, "symbols")
    with pytest.raises(BudgetExceeded, match="symbols: more than the file's budget of 10 entries"):
        budget.take_entries(1, "symbols")
    fresh = Budget(max_seconds=2.0, clock=clock)
    clock.now = 2.5
    with pytest.raises(BudgetExceeded, match="rows: over the file's time budget of 2 s"):
        fresh.check_time("rows")
    fresh.restart_clock()
    fresh.check_time("rows")  # a new parse of the same file: time starts again


def test_cancel_all_stops_every_budget_until_reset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(budget_module, "_cancelled", False)  # put back after the test
    budget = Budget()
    cancel_all()
    with pytest.raises(BudgetExceeded, match="the agent is exiting"):
        budget.check_time("DWARF DIEs")
    monkeypatch.setattr(budget_module, "_cancelled", False)
    budget.check_time("DWARF DIEs")


@pytest.mark.parametrize(
    ("data", "value", "end"),
    [
        (b"\x02", 2, 1),
        (b"\xe5\x8e\x26", 624485, 3),
        (b"\xff" * 9 + b"\x01", (1 << 64) - 1, 10),
    ],
)
def test_uleb_decodes_up_to_ten_bytes(data: bytes, value: int, end: int) -> None:
    assert uleb(data, 0) == (value, end)
    assert uleb128(data, 0) == (value, end)


def test_sleb_sign() -> None:
    assert sleb(b"\x7f", 0) == (-1, 1)
    assert sleb128(b"\x80\x7f", 0) == (-128, 2)


@pytest.mark.parametrize("data", [b"\xff" * 10 + b"\x01", b"\xff" * 1_500_000, b"\x80\x80"])
def test_long_or_truncated_leb_is_an_error(data: bytes) -> None:
    with pytest.raises(LebError):
        uleb(data, 0)
    with pytest.raises(LebError):
        sleb(data, 0)
    with pytest.raises(CfiError):
        uleb128(data, 0)
    with pytest.raises(CfiError):
        sleb128(data, 0)


def test_compressed_section_claiming_more_than_the_budget_is_not_decompressed() -> None:
    body = zlib_bomb(6 << 30, 1 << 20)
    header = SectionHeader(".symtab", "SHT_SYMTAB", SHF_COMPRESSED, 0, len(body), 0)
    budget = Budget(max_bytes=64 << 20)
    with pytest.raises(BudgetExceeded, match="decompressing"):
        read_section(io.BytesIO(body), header, 64, True, budget=budget)
    assert budget.used_bytes == len(body)  # the raw read only


def test_compressed_section_within_the_budget_is_paid_for() -> None:
    body = zlib_bomb(1 << 20)
    header = SectionHeader(".debug_info", "SHT_PROGBITS", SHF_COMPRESSED, 0, len(body), 0)
    budget = Budget(max_bytes=8 << 20)
    assert read_section(io.BytesIO(body), header, 64, True, budget=budget) == bytes(1 << 20)
    assert budget.used_bytes == len(body) + (1 << 20)
