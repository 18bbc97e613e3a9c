"""Benchmarks of bpfprof against BCC's own tools (`make bench`)."""
