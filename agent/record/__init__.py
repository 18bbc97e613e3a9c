"""One-off profiles (`bpfprof record`): the driver, the held COMMAND, capture
to a directory and replay of a capture.
"""
