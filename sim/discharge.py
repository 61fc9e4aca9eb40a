"""Stop-line discharge of a driver model: what a standing queue releases per second of green.

The twin predicts delay with its own drivers (no imperfection, so its runs are
deterministic).  Its drivers must release a queue as fast as the field's do, or every
plan looks as if it had more capacity than it has, and short cycles look best
(docs/twin.md, "Drivers").  This module measures that rate the same way for any SUMO
vehicle type: one approach's movement gets red and green in turn while a flow above
its capacity keeps a queue standing, and the vehicles crossing the stop line are
counted per second of green.  ``bench/twin_discharge.py`` prints the comparison;
``tests/test_twin_drivers.py`` holds the twin to it.

SUMO edge code: it runs libsumo (one simulation per process, closed on return).
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from xml.sax.saxutils import quoteattr

from controller.twin import TwinConfig, vtype_xml


def uncalibrated(config: TwinConfig) -> TwinConfig:
    """``config`` with the twin's drivers before calibration: SUMO's default driver
    without imperfection (no start-up delay, acceleration 2.6 m/s²)."""
    return replace(config, startup_delay_s=0.0, car_accel_mps2=2.6)


@dataclass(frozen=True)
class Discharge:
    """Mean departures over the stop line, cumulative by second of green."""

    label: str
    #: ``cumulative[k]``: vehicles past the stop line after ``k + 1`` seconds of green,
    #: averaged over the measured cycles.
    cumulative: tuple[float, ...]
    cycles: int

    def after(self, green_s: int) -> float:
        """Vehicles released by the end of second ``green_s`` of green."""
        if not 1 <= green_s <= len(self.cumulative):
            raise ValueError(f"green_s must be 1..{len(self.cumulative)}, got {green_s}")
        return self.cumulative[green_s - 1]

    def rate_veh_h(self, from_s: int = 10, to_s: int | None = None) -> float:
        """Discharge rate between two seconds of green (past the start-up), vehicles/h."""
        end = len(self.cumulative) if to_s is None else to_s
        if not 1 <= from_s < end <= len(self.cumulative):
            raise ValueError(f"need 1 <= from_s < to_s <= {len(self.cumulative)}")
        return (self.after(end) - self.after(from_s)) / (end - from_s) * 3600.0


def mean_discharge(runs: Sequence[Discharge], label: str) -> Discharge:
    """The mean of several measurements of one driver (a random driver over seeds)."""
    if not runs:
        raise ValueError("mean_discharge needs at least one measurement")
    cumulative = tuple(
        statistics.fmean(c) for c in zip(*(r.cumulative for r in runs), strict=True)
    )
    return Discharge(label, cumulative, sum(r.cycles for r in runs))


def measure_discharge(
    net_file: Path | str,
    tls_id: str,
    from_edge: str,
    to_edge: str,
    vtype: Mapping[str, float | str],
    *,
    label: str,
    scratch: Path,
    entry_edge: str | None = None,
    red_s: int = 50,
    green_s: int = 50,
    cycles: int = 20,
    warmup_cycles: int = 2,
    flow_veh_h: float = 3000.0,
    seed: int = 1,
) -> Discharge:
    """Cumulative discharge of ``from_edge -> to_edge`` for drivers of type ``vtype``.

    Every link of ``tls_id`` from ``from_edge`` to ``to_edge`` shows green for
    ``green_s`` after ``red_s`` of red; every other link stays red.  The flow
    (inserted on the free lanes of ``from_edge``) must exceed what the green
    releases, so that a queue stands at every green start.  It enters on
    ``entry_edge`` (default ``from_edge``), upstream where the approach is short.
    """
    import libsumo

    if red_s < 1 or green_s < 2 or cycles < 1 or warmup_cycles < 0:
        raise ValueError("red_s >= 1, green_s >= 2, cycles >= 1 and warmup_cycles >= 0")
    scratch.mkdir(parents=True, exist_ok=True)
    routes = scratch / f"discharge-{re.sub(r'[^A-Za-z0-9_.-]', '_', label)}.rou.xml"
    period = red_s + green_s
    end = period * (warmup_cycles + cycles)
    routes.write_text(
        "<routes>\n"
        f"  {vtype_xml('driver', vtype)}\n"
        f'  <flow id="queue" type="driver" begin="0" end="{end}" vehsPerHour="{flow_veh_h:g}"'
        f' from={quoteattr(entry_edge or from_edge)} to={quoteattr(to_edge)}'
        ' departLane="free" departSpeed="max"/>\n'
        "</routes>\n"
    )
    libsumo.start([
        "sumo", "-n", str(net_file), "-r", str(routes), "--seed", str(seed),
        "--step-length", "1", "--no-step-log", "true", "--no-warnings", "true",
        "--duration-log.disable", "true", "--time-to-teleport", "-1",
    ])
    try:
        links = libsumo.trafficlight.getControlledLinks(tls_id)
        served = [
            any(c[0].rsplit("_", 1)[0] == from_edge and c[1].rsplit("_", 1)[0] == to_edge
                for c in link)
            for link in links
        ]
        if not any(served):
            raise ValueError(f"{tls_id!r} controls no link from {from_edge!r} to {to_edge!r}")
        red = "r" * len(links)
        green = "".join("G" if s else "r" for s in served)
        seen: set[str] = set()
        totals = [0.0] * green_s
        released = 0
        for t in range(end):
            second = t % period
            libsumo.trafficlight.setRedYellowGreenState(tls_id, green if second >= red_s else red)
            libsumo.simulationStep()
            new = [v for v in libsumo.edge.getLastStepVehicleIDs(to_edge) if v not in seen]
            seen.update(new)
            if second == red_s:
                released = 0
            if second >= red_s:
                released += len(new)
                if t >= period * warmup_cycles:
                    totals[second - red_s] += released
    finally:
        libsumo.close()
    return Discharge(label, tuple(x / cycles for x in totals), cycles)
