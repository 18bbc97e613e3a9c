"""Whole native stacks without frame pointers: CFI tables for the BPF walker.

The pipeline, one module per step:

- `ehframe`: split `.eh_frame`/`.debug_frame` into CIEs and FDEs (struct,
  not pyelftools: 10x faster on libc).
- `cfa`: run an FDE's DW_CFA program into DWARF's rule table.
- `rows`: map each rule row to a 12-byte x86-64 row the walker follows
  (CFA = RSP/RBP + n, PLT stubs, signal frames, outermost frame); merge a
  binary's FDEs into one sorted table with gaps marked.
- `table`: the table of an ELF file, cached on disk by build ID.
- `loader`: put tables and per-process mappings into the walker's maps.
- `layout`: the Python mirror of bpf/unwind.h.
"""
