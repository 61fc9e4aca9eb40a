"""One in-process twin worker for tests that look at its departures (libsumo, one per process)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from controller.twin import TwinConfig, _Worker


@contextmanager
def twin_worker(config: TwinConfig, scratch: str) -> Iterator[_Worker]:
    import libsumo

    w = _Worker(config, scratch)
    try:
        yield w
    finally:
        libsumo.close()


def module_worker(config: TwinConfig, name: str) -> Callable[..., Iterator[_Worker]]:
    """A module-scoped ``worker`` fixture on ``config`` (libsumo closes with the module)."""

    @pytest.fixture(scope="module")
    def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Worker]:
        with twin_worker(config, str(tmp_path_factory.mktemp(name))) as w:
            yield w

    return worker
