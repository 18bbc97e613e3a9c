"""The continuous agent (`bpfprof run`): its configuration, filters, the
runner's clock, delivery, spool, rolling files, transport and telemetry.
"""
