"""Host-side facts about CPython interpreters (3.8-3.14), for Python frames.

The BPF walker (bpf/python.h) follows a thread's Python frame chain and
emits, per frame, a code object's address and an instruction offset. This
package tells it where to look and turns what it emits into names:

- interp: is an ELF file a CPython, which version, where `_PyRuntime` and
  `_PyEval_EvalFrameDefault` are;
- layout, debugoffsets: `WalkLayout`, the byte offsets the walk reads
  (tables for 3.8-3.12, the interpreter's `_Py_DebugOffsets` for 3.13+);
- memory: bounded reads of another process (process_vm_readv);
- walk: the same walk done from user space (the reference the BPF walker
  is checked against);
- code, linetable: code object → qualname, file, line.

docs/python.md tells where every number comes from and what is unsupported.
"""
