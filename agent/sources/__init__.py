"""Sample sources, one module per profile type (agent/registry.py says which),
and what they share: the SampleSource interface (base.py), the program
skeleton of the stack-counting types (program.py), the CFI walker's upkeep
(unwinding.py) and the allocator probes (allocators.py, probepoint.py).

Creating a source is cheap and needs no privileges: its program is
compiled at start(), by BCC in a short-lived loader child
(agent/kernel/bcc_loader.py); no module of the agent process imports `bcc`.
"""
