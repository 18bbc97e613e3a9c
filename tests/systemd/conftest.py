"""tests/systemd runs only when asked: `make test-systemd` sets BPFPROF_TEST_SYSTEMD=1.

It builds (once) and boots a Debian container under systemd-nspawn, which
takes minutes and root; `make test` must not collect it.
"""

import os

if os.environ.get("BPFPROF_TEST_SYSTEMD") != "1":
    collect_ignore_glob = ["test_*.py"]
