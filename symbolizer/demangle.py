"""C++ and Rust symbol names, demangled as c++filt and rustfilt show them.

- C++ (Itanium ABI, `_Z...`): `cxxfilt`, which calls libstdc++'s own
  `abi::__cxa_demangle` through ctypes, so names read exactly as c++filt
  and gdb print them ("[clone .cold]" suffixes included).
- Rust v0 (`_R...`) and legacy (`_ZN...17h<16 hex>E`): `rust_demangler`,
  a pure-Python implementation of both schemes. Legacy names are
  Itanium-shaped, so they are recognised by their hash suffix first and
  shown as Rust spells them (`<impl Foo for Bar>`, not `_$LT$impl$u20$`);
  the hash is dropped, as rustfilt and `{:#}` do.

Anything that fails to demangle is returned unchanged: a demangler error
must never lose a frame. Overlong names are not demangled (the C++
demangler is recursive: a hostile name could exhaust its stack).
Results are memoised in a bounded dict.
"""

from __future__ import annotations

import re

_LEGACY_RUST = re.compile(r"^_ZN.*17h[0-9a-f]{16}E(?:\.[^$]*)?$")
_HASH_SUFFIX = re.compile(r"::h[0-9a-f]{16}$")
MAX_MANGLED = 4096
_MEMO_SIZE = 1 << 16
_memo: dict[str, str] = {}


def demangle(name: str) -> str:
    """The readable form of a mangled name; other names as they are."""
    if not name.startswith(("_Z", "_R", "__Z")) or len(name) > MAX_MANGLED:
        return name
    found = _memo.get(name)
    if found is None:
        found = _demangle(name)
        if len(_memo) >= _MEMO_SIZE:
            _memo.clear()
        _memo[name] = found
    return found


def _demangle(name: str) -> str:
    if name.startswith("_R") or _LEGACY_RUST.match(name):
        rust = _rust(name)
        if rust:
            return rust
    return _cxx(name)


def _rust(name: str) -> str:
    try:
        import rust_demangler

        out = str(rust_demangler.demangle(name))
    except Exception:  # the library raises many kinds on bad input
        return ""
    return _HASH_SUFFIX.sub("", out)


def _cxx(name: str) -> str:
    try:
        import cxxfilt

        return str(cxxfilt.demangle(name, external_only=False))
    except Exception:  # InvalidName, or the library or libstdc++ missing
        return name
