"""Exceptions the project raises on purpose.

``ConfigError`` is for bad input an engineer or operator can fix (a missing or
malformed file, an unknown traffic light id, inconsistent times).  The CLI turns
it into one line on stderr naming the file and the problem, and exit code 2.
``SimulationError`` is SUMO stopping a run (usually input it only reads while
loading: a route over an edge the network lacks); the CLI prints its message and
exits with 1.
"""

from __future__ import annotations

from pathlib import Path


class AtscError(Exception):
    """Base class of the project's own errors."""


class ConfigError(AtscError):
    """Bad input that stops start-up; the message says what to fix."""

    def __init__(self, problem: str, path: Path | str | None = None) -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class SimulationError(AtscError):
    """SUMO stopped a scenario run; the message names the run and quotes SUMO."""
