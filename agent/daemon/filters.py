"""Which processes the agent reports: include/exclude rules from the config.

A process is reported when it matches every include rule that is set (an
empty rule includes everything) and no exclude rule. Rules: executable name
(exact basename), pid, container id (full or a prefix of at least 12 hex
digits, as `docker ps` shows them), cgroup path (a prefix, e.g.
"/system.slice/nginx.service"), and a regular expression searched in the
command line. Decisions are made on facts captured when the process was
first seen, so they do not change while it lives.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from agent.daemon.runconfig import FilterConfig
from agent.pipeline.procinfo import ProcessFacts


@dataclass(frozen=True)
class Rule:
    executables: frozenset[str] = frozenset()
    pids: frozenset[int] = frozenset()
    containers: tuple[str, ...] = ()
    cgroups: tuple[str, ...] = ()
    command_line: re.Pattern[str] | None = None

    @property
    def empty(self) -> bool:
        return not (
            self.executables or self.pids or self.containers or self.cgroups or self.command_line
        )

    def matches_all(self, f: ProcessFacts) -> bool:
        """Every criterion that is set holds (for includes)."""
        return all(check for set_, check in self._checks(f) if set_)

    def matches_any(self, f: ProcessFacts) -> bool:
        """Some criterion that is set holds (for excludes)."""
        return any(check for set_, check in self._checks(f) if set_)

    def _checks(self, f: ProcessFacts) -> list[tuple[bool, bool]]:
        return [
            (bool(self.executables), f.exe_name in self.executables),
            (bool(self.pids), f.pid in self.pids),
            (
                bool(self.containers),
                bool(f.container_id) and any(f.container_id.startswith(c) for c in self.containers),
            ),
            (bool(self.cgroups), any(_under(f.cgroup, c) for c in self.cgroups)),
            (
                self.command_line is not None,
                bool(self.command_line and self.command_line.search(f.command_line)),
            ),
        ]


def _under(path: str, prefix: str) -> bool:
    prefix = prefix.rstrip("/")
    return path == prefix or path.startswith(prefix + "/")


def _rule(c: FilterConfig, side: str) -> Rule:
    regex = getattr(c, f"{side}_command_line")
    return Rule(
        executables=frozenset(getattr(c, f"{side}_executables")),
        pids=frozenset(getattr(c, f"{side}_pids")),
        containers=tuple(x.lower() for x in getattr(c, f"{side}_containers")),
        cgroups=tuple(getattr(c, f"{side}_cgroups")),
        command_line=re.compile(regex) if regex else None,
    )


class ProcessFilter:
    """Decides per pid, caching each decision until the pid is forgotten."""

    def __init__(self, config: FilterConfig) -> None:
        self.include = _rule(config, "include")
        self.exclude = _rule(config, "exclude")
        self.active = not (self.include.empty and self.exclude.empty)
        self._decisions: dict[int, bool] = {}

    def wants(self, facts: ProcessFacts) -> bool:
        if not self.active:
            return True
        decision = self._decisions.get(facts.pid)
        if decision is None:
            decision = (self.include.empty or self.include.matches_all(facts)) and not (
                self.exclude.matches_any(facts)
            )
            self._decisions[facts.pid] = decision
        return decision

    def forget(self, pid: int) -> None:
        self._decisions.pop(pid, None)
