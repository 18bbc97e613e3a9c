"""Where in a function's prologue a uprobe is cheapest (x86-64).

At a uprobe the kernel replaces the instruction with int3. On the hit it
either emulates the original instruction (x86 emulates `push reg`, relative
jmp/call/jcc and nop) or single-steps a copy of it out of line, which takes
a second trap and costs about ten times as much (measured here: ~1 us
against ~12 us per call). A probe further into the prologue sees the same
arguments as long as nothing before it has written their registers, and is
hit on every call as long as nothing before it branches away.

capstone decodes the instructions (lengths, registers written, branch
groups): hand-decoding x86 prefixes and ModRM to the same certainty would
be a disassembler of our own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import capstone
from capstone import x86

MAX_INSNS = 8  # look no further than a prologue

_BRANCHES = {capstone.CS_GRP_JUMP, capstone.CS_GRP_CALL, capstone.CS_GRP_RET, capstone.CS_GRP_INT}
_NULL_CHECK_JUMPS = {"je", "jne", "jz", "jnz"}


def _disassembler() -> Any:
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    md.detail = True
    return md


def emulated(insn: Any) -> bool:
    """Would the kernel emulate this instruction at a probe (no single-step)?"""
    if insn.mnemonic == "push" and insn.operands and insn.operands[0].type == x86.X86_OP_REG:
        return True
    if insn.mnemonic == "nop" and insn.size == 1:
        return True
    groups = set(insn.groups)
    return capstone.CS_GRP_BRANCH_RELATIVE in groups and bool(groups & _BRANCHES)


def probe_offset(code: bytes, registers: Sequence[str], *, allow_null_check: bool = False) -> int:
    """Bytes past the function start where an entry probe is emulated and
    still sees `registers` as the caller set them; 0 when in doubt.

    With `allow_null_check`, a `test rdi, rdi` followed by a conditional
    jump may be passed over: its taken branch is the first argument being
    NULL, which for free() means nothing to record."""
    previous: Any = None
    for count, insn in enumerate(_disassembler().disasm(code, 0)):
        if count >= MAX_INSNS:
            break
        branch = bool(set(insn.groups) & _BRANCHES)
        if emulated(insn) and (insn.address == 0 or not branch):
            return int(insn.address)
        if branch and not (allow_null_check and _null_check(previous, insn)):
            break
        _, written = insn.regs_access()
        if any(insn.reg_name(r) in registers for r in written):
            break
        previous = insn
    return 0


def _null_check(test: Any, jump: Any) -> bool:
    return (
        test is not None
        and test.mnemonic == "test"
        and test.op_str == "rdi, rdi"
        and jump.mnemonic in _NULL_CHECK_JUMPS
    )
