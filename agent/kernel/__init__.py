"""Everything that touches bpf(2), BCC and the loader child: the only code that
loads, attaches or reads BPF objects, and the Python mirrors of bpf/*.h.
"""
