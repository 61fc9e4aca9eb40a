"""``run_one(probe=...)``: an evaluation script watches the ground truth beside a controller."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import pytest

from controller.messages import DetectorReading
from sim.drivers import SignalDriver
from sim.runner import case_from_scenario, run_one


class Watcher:
    """Passes the controller's states through and counts what it sees."""

    def __init__(self, inner: SignalDriver) -> None:
        self.inner = inner
        self.native = inner.native
        self.steps = 0
        self.truth_seconds = 0
        self.vehicles_seen: set[str] = set()

    def step(self, now: float, readings: Sequence[DetectorReading]) -> Mapping[str, str] | None:
        self.steps += 1
        return self.inner.step(now, readings)

    def close(self) -> dict[str, object]:
        return self.inner.close()

    def observe_truth(self, sumo: ModuleType, now: float) -> None:
        self.truth_seconds += 1
        self.vehicles_seen.update(sumo.vehicle.getIDList())


@pytest.mark.sumo
def test_a_probe_sees_every_second_and_the_controller_still_drives(tmp_path: Path) -> None:
    case = case_from_scenario("midday")
    case = replace(case, end_s=case.begin_s + 300.0, warmup_s=100.0)
    probes: list[Watcher] = []

    def probe(driver: SignalDriver) -> SignalDriver:
        probes.append(Watcher(driver))
        return probes[0]

    kpis = run_one(case, "fixed", 1, tmp_path, progress=False, probe=probe)
    plain = run_one(case, "fixed", 1, tmp_path / "plain", progress=False)
    (w,) = probes
    assert w.truth_seconds == 300
    assert w.steps == 301    # the first second's states, then one per simulation step
    assert len(w.vehicles_seen) > 20
    # Watching changes nothing: the same run without the probe gives the same KPIs.
    assert kpis.vehicle_delay_s == plain.vehicle_delay_s
    assert kpis.throughput_veh_h == plain.throughput_veh_h


class Closed(Watcher):
    """Remembers that it was closed."""

    closed = 0

    def close(self) -> dict[str, object]:
        Closed.closed += 1
        return self.inner.close()


@pytest.mark.sumo
def test_the_driver_is_closed_when_sumo_refuses_the_run(tmp_path: Path) -> None:
    """A driver may hold an MQTT link or twin workers: SUMO failing to start must not leak it."""
    broken = tmp_path / "broken.add.xml"
    broken.write_text('<additional><busStop id="x" lane="no_such_lane_0" startPos="0" '
                      'endPos="10"/></additional>')
    case = case_from_scenario("midday")
    case = replace(case, end_s=case.begin_s + 300.0, warmup_s=100.0, additional_files=(broken,))
    with pytest.raises(Exception, match="Process Error"):  # libsumo: details on stderr
        run_one(case, "fixed", 1, tmp_path, progress=False, probe=Closed)
    assert Closed.closed == 1
