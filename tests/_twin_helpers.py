"""One in-process twin worker for tests that look at its departures (libsumo, one per process)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from controller.twin import TwinConfig, _Worker


@contextmanager
def twin_worker(config: TwinConfig, scratch: str) -> Iterator[_Worker]:
    import libsumo

    w = _Worker(config, scratch)
    try:
        yield w
    finally:
        libsumo.close()
